"""Files and errors: atomic writes, the output guard, error types, the CLI convention, state checks."""
__all__: list = []
