# Everything runs from a project-local virtualenv (.venv), created on first use.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
ARGS ?=

.PHONY: install run test test-fast bench clean

$(STAMP): setup.py requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing metatrain and its dependencies into $(VENV) (first time: a few minutes)"
	@# pip on this kind of machine warns once per package about missing local index folders: hide that noise only.
	@# --no-compile: no byte-compiling of every installed file (torch, ray, mlflow: 100 s of the 230 s
	@# install here, benchmarks/RESULTS.md); Python compiles the modules it imports, once, on first use.
	$(PY) -m pip install --quiet --disable-pip-version-check --no-compile -e '.[test]' 2>&1 | { grep -v 'is neither a file nor a directory' || true; }
	@touch $(STAMP)

install: $(STAMP)

run: install  ## meta-train on the embedded defaults: MT-net, 10-shot sine (about a minute on 2 cores)
	$(VENV)/bin/metatrain train sine_quick $(ARGS)

# Two pytest workers (pytest-xdist): most tests wait on Ray, Tune and MLflow start-up rather than
# compute, so two at a time on 2 cores take less wall time than one (benchmarks/RESULTS.md); whole
# files per worker (loadfile): per-test stealing rebuilt shared fixtures and took 29 min, not 22.
test: install  ## the test suite (the same command CI runs)
	$(PY) -m pytest -q -n 2 --dist loadfile tests $(ARGS)

test-fast: install  ## the quick subset: no Ray, Tune or MLflow servers, no training runs (about a minute on 2 cores)
	$(PY) -m pytest -q -m "not slow" tests $(ARGS)

bench: install  ## batched vs per-task meta-gradient throughput
	$(PY) benchmarks/bench_batched.py $(ARGS)

clean:
	rm -rf $(VENV) runs *.egg-info .pytest_cache
