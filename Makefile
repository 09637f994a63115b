# The two commands a user needs: `make quickstart` and `make test`.
# Each creates .venv if missing and installs what it needs into it first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export TF_ENABLE_ONEDNN_OPTS ?= 0
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: quickstart test test-slow lint format install install-test clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Stamp files: reinstall only when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[test,interop]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

quickstart: install
	PYTHON=$(PY) bash scripts/quickstart.sh

test: install-test
	PYTHON=$(PY) bash scripts/test.sh

test-slow: install-test
	PYTHON=$(PY) bash scripts/test.sh --slow

lint: install-test
	$(PY) -m ruff format --check . && $(PY) -m ruff check .

format: install-test
	$(PY) -m ruff format . && $(PY) -m ruff check --fix .

clean:
	rm -rf runs .pytest_cache
