"""The YAML recipes of the search (``search.py``) and the retraining (``retrain.py``), with their
files, read by one machinery (``schema.py``: defaults -> file -> overrides, one error per mistake)."""
__all__: list = []
