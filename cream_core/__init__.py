"""The framework-free core: everything of the project that imports neither torch nor paddle.

Sub-packages, lowest first (a package imports only those before it; ``tests/test_layering.py``):

- ``io``: atomic writes, the output guard, errors, the CLI error convention, state-dict checks, digests.
- ``rules``: the torch <-> Paddle state-dict rename/transpose rules, for every package.
- ``arch``: the Cream search space, supernet and child nets as data; FLOPs; seeded weights; golden data.
- ``data``: images in, numbers out: datasets, eval/train transforms, loaders, the eval loop and journal.
- ``training``: the retraining loop, drop masks, learning-rate schedules.
- ``search``: the supernet search bookkeeping: the prioritized board.
- ``config``: the YAML recipes (search, retraining) read into frozen dataclasses.
"""
__all__: list = []
