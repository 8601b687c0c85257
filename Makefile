# `make demo` and `make test` each create (or reuse) .venv and install what they need.
# `make test` = `make lint` (ruff + mypy, 0 findings) then the whole suite (what CI runs);
# `make test-fast` = the tests not marked slow (the edit loop: 27 s of tests, 35 s with start-up, on 2 idle cores).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.zscir-installed

.PHONY: demo demo-quick test test-fast lint bench install clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: the CPU wheel on these machines; a later unpinned request would pull CUDA builds.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m zscir demo $(ARGS)

demo-quick: $(STAMP)
	$(PY) -m zscir demo --quick $(ARGS)

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m mypy src/zscir

test: lint
	$(PY) -m pytest -q $(ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(ARGS)

bench: $(STAMP)
	$(PY) benchmarks/embed_throughput.py

clean:
	rm -rf $(VENV) runs build
