"""The supernet search's framework-free bookkeeping: the prioritized path board."""
__all__: list = []
