"""The retraining loop (framework-free, around each framework's step), drop masks, LR schedules."""
__all__: list = []
