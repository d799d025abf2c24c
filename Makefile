# Everything runs from a project-local virtualenv (.venv), created on first use.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
ARGS ?=

.PHONY: install run test test-fast lint bench clean

$(STAMP): setup.py requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing metatrain and its dependencies into $(VENV) (first time: a few minutes)"
	@# pip on this kind of machine warns once per package about missing local index folders: hide that noise only.
	@# pip byte-compiles what it installs on one core (100 of its 230 s here); compileall does it on every core.
	@# Compiled it must be: this machine's environment sets PYTHONDONTWRITEBYTECODE, so a module left
	@# uncompiled is compiled again by every process that imports it (Ray workers, CLI runs).
	$(PY) -m pip install --quiet --disable-pip-version-check --no-compile -e '.[test]' 2>&1 | { grep -v 'is neither a file nor a directory' || true; }
	@# Files written for newer Pythons (torch's py312 test helpers) do not compile, as under pip: not an error.
	@$(PY) -m compileall -q -j 0 "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" > /dev/null 2>&1 || true
	@touch $(STAMP)

install: $(STAMP)

run: install  ## meta-train on the embedded defaults: MT-net, 10-shot sine (about a minute on 2 cores)
	$(VENV)/bin/metatrain train sine_quick $(ARGS)

# Two pytest workers (pytest-xdist): most tests wait on Ray, Tune and MLflow start-up rather than
# compute, so two at a time on 2 cores take less wall time than one (benchmarks/RESULTS.md); whole
# files per worker (loadfile): per-test stealing rebuilt shared fixtures and took 29 min, not 22.
test: install  ## the test suite (the same command CI runs)
	$(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder tests $(ARGS)

test-fast: install  ## tests/unit only: no Ray, Tune or MLflow servers, no training runs (about a minute on 2 cores)
	$(PY) -m pytest -q tests/unit $(ARGS)

lint: install  ## ruff over the code, tests and benchmarks (the rules in pyproject.toml); CI runs it before the tests
	$(VENV)/bin/ruff check pipeline tasks tests benchmarks setup.py

bench: install  ## batched vs per-task meta-gradient throughput
	$(PY) benchmarks/bench_batched.py $(ARGS)

clean:
	rm -rf $(VENV) runs *.egg-info .pytest_cache
