"""The console scripts (cream-models, cream-demo, cream-eval, cream-search, cream-train): thin
command lines over the core and the framework packages; see each module."""
__all__: list = []
