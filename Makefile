# Quickstart targets. `make demo` and `make test` each set up .venv first (idempotent).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test bench clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	# torch first, pinned: an unpinned torch would pull a multi-GB build from the index
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/cream-demo $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	# PaDiff, the peer tool bench/parity_bench.py compares against
	$(PY) -m pip install -q -e ".[test,bench]"
	$(PY) -m bench.run_all $(ARGS)

clean:
	rm -rf $(VENV) out
