"""The supernet search, framework-free: the prioritized path board, step records, one iteration's
control flow over a per-framework ops object, torch 1.2's SGD bookkeeping, the run's state and
checkpoints, and the epoch loop."""
__all__: list = []
