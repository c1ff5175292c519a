# vsim-agent: one entry point for people and CI.
#
#   make venv       .venv with the package (editable) and the test tools
#   make demo       reference hub + simulated SIMs, live view
#   make test       the test suite
#   make lint       ruff check, ruff format --check, mypy (strict)
#   make bench      the benchmarks (tests/bench/bench_*.py; the soak is run by hand)
#   make install    the systemd service on this host (as root), or into DESTDIR
#   make uninstall  remove it again; config, api_key, state and the user are kept
#
# install/uninstall run systemd/install.sh (read it: every step is there) with these variables:
#   DESTDIR=            staging root; when set, no user/systemctl/modprobe outside it
#   PREFIX=/opt/vsim-agent  the service's venv is $(PREFIX)/venv
#   SYSCONFDIR=/etc  UNITDIR=/etc/systemd/system  DOCDIR=/usr/share/doc/vsim-agent  LIBDIR=/usr/lib
#   PYTHON=python3      the interpreter (3.11+) both venvs are made from
#   PIP_ARGS=           extra pip arguments for the service venv (offline: --no-index --find-links DIR)
#   SKIP_VENV=          1: skip the service venv (tests/test_install.py; see docs/operations.md)

PYTHON ?= python3
VENV ?= .venv
DESTDIR ?=
PREFIX ?= /opt/vsim-agent
SYSCONFDIR ?= /etc
UNITDIR ?= /etc/systemd/system
DOCDIR ?= /usr/share/doc/vsim-agent
LIBDIR ?= /usr/lib
PIP_ARGS ?=
SKIP_VENV ?=
PYTEST_ARGS ?=

BIN := $(VENV)/bin
INSTALL_ENV := DESTDIR='$(DESTDIR)' PREFIX='$(PREFIX)' SYSCONFDIR='$(SYSCONFDIR)' \
	UNITDIR='$(UNITDIR)' DOCDIR='$(DOCDIR)' LIBDIR='$(LIBDIR)' PYTHON='$(PYTHON)' \
	PIP_ARGS='$(PIP_ARGS)' SKIP_VENV='$(SKIP_VENV)'

.PHONY: help venv demo test lint bench install uninstall

help:
	@sed -n '3,10p' Makefile | sed 's/^# *//'

# The stamp makes `make test` cheap after the first run; it is redone when pyproject.toml
# (the dependency list) changes.
venv: $(VENV)/.vsim-venv
$(VENV)/.vsim-venv: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -e '.[test]'
	touch $@

demo: venv
	$(BIN)/vsim-agent demo

test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: venv
	@set -e; found=0; \
	for script in tests/bench/bench_*.py; do \
		[ -f "$$script" ] || continue; \
		found=1; echo "== $$script"; $(BIN)/python "$$script"; \
	done; \
	[ $$found = 1 ] || echo "no benchmarks in tests/bench/"

install:
	@$(INSTALL_ENV) ./systemd/install.sh install

uninstall:
	@$(INSTALL_ENV) ./systemd/install.sh uninstall
