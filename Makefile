# stacko: `make demo` runs the seed example, `make test` runs every test.
# Both set up what they need on a fresh Debian machine, as root.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Tests and the demo mount for real: as root they run in a private mount
# namespace, so nothing they mount is seen outside or outlives them.
PRIVATE := $(if $(filter 0,$(shell id -u)),unshare -m --propagation private,)
PREFIX ?= /usr/local

.PHONY: all venv test test-deps unit demo bench install clean

all: venv

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

# The container tools the interop tests compare against, from Debian.
test-deps:
	@./tests/install-deps.sh

test: venv test-deps
	$(PRIVATE) $(PY) -m pytest -q tests

unit: venv
	$(PY) -m pytest -q tests -m "not mounts"

demo: venv
	$(PRIVATE) ./demo.sh $(VENV)/bin/stacko

bench: venv
	$(PRIVATE) $(PY) bench/run.py

install:
	$(PYTHON) -m pip install .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
