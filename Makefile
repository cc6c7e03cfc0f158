# stacko: `make demo` runs the seed example, `make test` runs every test.
# Both set up what they need on a fresh Debian machine, as root.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Tests and the demo mount for real: as root they run in a private mount
# namespace, so nothing they mount is seen outside or outlives them.
PRIVATE := $(if $(filter 0,$(shell id -u)),unshare -m --propagation private,)
PREFIX ?= /usr/local

.PHONY: all venv test test-deps unit pythons demo bench install clean

all: venv

# A regular (not editable) install: an editable one costs every start of the
# command ~20 ms for its import hook.  Tests run the checkout itself.
$(VENV)/.installed: pyproject.toml setup.py $(wildcard stacko/*.py stacko/*/*.py)
	./tools/ensure-python.sh
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q '.[test]'
	touch $@

venv: $(VENV)/.installed

# The container tools the interop tests compare against, from Debian.
test-deps:
	@./tests/install-deps.sh

# A fresh --basetemp: pytest's own clean-up of old temporary directories
# recurses per level and cannot remove the 600-deep trees some tests make.
TESTTMP := /tmp/stacko-tests.$(shell echo $$PPID)
test: venv test-deps
	rm -rf $(TESTTMP)
	$(PRIVATE) $(PY) -m pytest -q -p no:cacheprovider --basetemp=$(TESTTMP) tests; \
	    status=$$?; rm -rf $(TESTTMP); \
	    TMPDIR_BASE=$(TESTTMP) $(PRIVATE) ./tools/test-pythons.sh $(PY) || status=1; \
	    rm -rf $(TESTTMP); exit $$status

# Only the run under the other Pythons (3.9 to 3.13, as found): see tools/test-pythons.sh.
pythons: venv
	TMPDIR_BASE=$(TESTTMP) $(PRIVATE) ./tools/test-pythons.sh $(PY); \
	    status=$$?; rm -rf $(TESTTMP); exit $$status

unit: venv
	$(PY) -m pytest -q tests -m "not mounts"

demo: venv
	$(PRIVATE) ./demo.sh $(VENV)/bin/stacko

bench: venv
	$(PRIVATE) $(PY) bench/run.py

# Generated at build time from the argparse parser, so they never drift from --help.
.PHONY: man completion
man: build/stacko.8
completion: build/stacko.bash
build/stacko.8: stacko/cli.py stacko/__init__.py tools/gen_manpage.py tools/cliref.py
	@mkdir -p build
	$(PYTHON) tools/gen_manpage.py $@
build/stacko.bash: stacko/cli.py tools/gen_completion.py tools/cliref.py
	@mkdir -p build
	$(PYTHON) tools/gen_completion.py $@

# `make install [DESTDIR=/tmp/pkg] [PREFIX=/usr]`: the package (pip, into the
# default scheme of $(INSTALL_PYTHON), under DESTDIR; PIP_INSTALL_FLAGS adds
# options such as --prefix or --no-deps), the systemd units, the bash completion
# and the man page under PREFIX.  The system's interpreter by default, not the
# first python3 on PATH (a pyenv shim or a venv would put the script in root's
# home).  The units run the console script where pip put it, as its RECORD says.
# A staged install (DESTDIR) ignores what is installed already: pip would
# uninstall it.
INSTALL_PYTHON ?= /usr/bin/python3
UNITDIR ?= $(PREFIX)/lib/systemd/system
BASHCOMPDIR ?= $(PREFIX)/share/bash-completion/completions
MANDIR ?= $(PREFIX)/share/man
PIP_INSTALL_FLAGS ?=
# The mount at boot, the confirmation of a tentative cutover after a good boot, and
# the update timer.
UNITS := stacko-stackpoint@.service stacko-confirm@.service stacko-update@.service \
         stacko-update@.timer

install: man completion
	$(INSTALL_PYTHON) -m pip install --root "$(or $(DESTDIR),/)" $(if $(DESTDIR),--ignore-installed) \
	  $(PIP_INSTALL_FLAGS) .
	script=$$($(INSTALL_PYTHON) tools/installed_script.py "$(DESTDIR)") && \
	  mkdir -p "$(DESTDIR)$(UNITDIR)" && \
	  for unit in $(UNITS); do \
	    sed "s|/usr/local/bin/stacko|$$script|g" contrib/$$unit \
	      > "$(DESTDIR)$(UNITDIR)/$$unit" && \
	    chmod 644 "$(DESTDIR)$(UNITDIR)/$$unit" || exit 1; \
	  done
	install -D -m 644 build/stacko.bash "$(DESTDIR)$(BASHCOMPDIR)/stacko"
	install -D -m 644 build/stacko.8 "$(DESTDIR)$(MANDIR)/man8/stacko.8"

clean:
	rm -rf $(VENV) .venv-py* build *.egg-info .pytest_cache
