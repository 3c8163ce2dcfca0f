"""The framework-free core: everything of the project that imports neither torch nor paddle.

Sub-packages, lowest first (a package imports only those before it; ``tests/test_layering.py``):

- ``io``: atomic writes, the output guard, errors, the CLI error convention, state-dict checks, digests.
- ``rules``: the torch <-> Paddle state-dict rename/transpose rules, for every package;
  ``backend``: the framework-free half of each framework's one ``Backend`` (processes, collectives,
  state to/from numpy).
- ``arch``: the Cream search space, supernet and child nets as data; FLOPs; seeded weights; golden data.
- ``data``: images in, numbers out: datasets, eval/train transforms, the one worker pool and its
  loaders, the eval loop and journal.
- ``training``: the retraining loop, the one training step, drop masks, resume checks, LR schedules.
- ``search``: the supernet search: board, step records, one iteration, SGD bookkeeping, the loop.
- ``config``: the YAML recipes (search, retraining) read into frozen dataclasses by one schema.
"""
__all__: list = []
