"""Fixtures for the CLI tests: one real etcd for the session, a cluster name per test, a node
file pointing at it and a store to populate it through."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgwarden.config.schema import EtcdConfig, NodeConfig, StoreConfig
from pgwarden.postgres import osuser
from pgwarden.store.cluster import ClusterStore
from pgwarden.store.factory import open_store
from tests.cli.helpers import write_node_file
from tests.support.etcd import EtcdServer
from tests.support.pg import (
    REPLPASS,
    REPLUSER,
    SUPERPASS,
    SUPERUSER,
    bootstrapped_primary,
    make_node_config,
    teardown,
)
from tests.support.ports import free_port

_counter = itertools.count()


@pytest.fixture(scope="session")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    with EtcdServer(tmp_path_factory.mktemp("etcd")) as server:
        yield server


@pytest.fixture
def cluster(request: pytest.FixtureRequest) -> str:
    base = re.sub(r"[^A-Za-z0-9_.-]", "-", request.node.name)[:50]
    return f"{base}-{next(_counter)}"


@pytest.fixture
def node_file(tmp_path: Path, cluster: str, etcd: EtcdServer) -> Path:
    return write_node_file(tmp_path / "pgwarden.yaml", cluster, etcd.endpoint)


@pytest.fixture
def store(cluster: str, etcd: EtcdServer) -> Iterator[ClusterStore]:
    s = open_store(StoreConfig(etcd=EtcdConfig(hosts=[etcd.endpoint])), cluster)
    yield s
    s.close()


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeConfig]:
    """A real PostgreSQL for the commands that ask one (edit-config checks parameter values)."""
    if not osuser.is_root() or osuser.lookup("postgres") is None:
        pytest.skip("needs root and a postgres OS user")
    cfg = make_node_config(tmp_path_factory.mktemp("pg"), "pg", free_port(), free_port())
    ctl = bootstrapped_primary(cfg)
    try:
        yield cfg
    finally:
        teardown(ctl)


@pytest.fixture
def pg_node_file(tmp_path: Path, cluster: str, etcd: EtcdServer, postgres: NodeConfig) -> Path:
    """The node file of a node whose PostgreSQL is `postgres`."""
    pg = {"port": postgres.postgresql.port,
          "superuser": {"username": SUPERUSER, "password": SUPERPASS},
          "replication": {"username": REPLUSER, "password": REPLPASS}}
    return write_node_file(tmp_path / "pg-node.yaml", cluster, etcd.endpoint, postgresql=pg)
