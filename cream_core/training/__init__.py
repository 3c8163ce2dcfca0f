"""The retraining loop (framework-free, around each framework's step), the one training step over a
tiny per-framework ops object, drop masks and their injection, resume checks, LR schedules."""
__all__: list = []
