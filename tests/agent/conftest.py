"""Fixtures shared by the agent tests that need real PostgreSQL servers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pgwarden.postgres.controller import PostgresController
from tests.support.pg import bootstrapped_primary, controller, make_node_config, query, teardown
from tests.support.ports import free_port

HOST = "127.0.0.1"


@pytest.fixture
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PostgresController, PostgresController]]:
    base = tmp_path_factory.mktemp("peers")
    p = bootstrapped_primary(make_node_config(base, "p", free_port(), free_port()))
    r = controller(make_node_config(base, "c", free_port(), free_port()))
    try:
        query(p._cfg, "CREATE TABLE t (id int PRIMARY KEY)")
        p.ensure_slots({"c"})
        r.clone(HOST, p._cfg.postgresql.port, timeout=60)
        r.start(role="replica", upstream=("p", HOST, p._cfg.postgresql.port), wait_timeout=30)
        yield p, r
    finally:
        teardown(r)
        teardown(p)
