"""The YAML recipes of the search (``search.py``) and the retraining (``retrain.py``), with their files."""
__all__: list = []
