# Quickstart: `make demo` runs the whole pipeline on the bundled synthetic corpus; `make test` runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUNNABLE := $(VENV)/.runnable
INSTALLED := $(VENV)/.installed

.PHONY: install test demo clean

# What `make demo` needs: the package and its app. torch is pinned here (a CPU wheel that lies on disk) and left
# unpinned in pyproject.toml, so users choose their build.
$(RUNNABLE): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[app]"
	touch $(RUNNABLE)

# What `make test` needs besides: the test tools and transformers' common model tests (from its sdist).
$(INSTALLED): $(RUNNABLE)
	$(BIN)/pip install -q -e ".[dev,app,serve]"
	$(BIN)/python tests/fetch_transformers_tests.py
	touch $(INSTALLED)

install: $(INSTALLED)

# tests/test_app.py drives the web app in Debian's chromium (about 25 s to install as root); where apt-get cannot
# install it, that test is skipped with a message and the others run.
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
		|| echo "chromium not installed: the browser test will be skipped"

test: $(INSTALLED) $(CHROMIUM)
	$(BIN)/python -m pytest tests

# Sizes are in configs/demo.yaml; finished stages are reused on the next run (`make clean` starts over).
demo: $(RUNNABLE)
	$(BIN)/python demo.py --config configs/demo.yaml

clean:
	rm -rf runs
