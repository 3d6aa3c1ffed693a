"""Fixtures shared by the agent tests that need real PostgreSQL servers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pgwarden.postgres.controller import PostgresController
from tests.support.pg import bootstrapped_primary, make_node_config, query, streaming_standby, teardown
from tests.support.ports import free_port

HOST = "127.0.0.1"


@pytest.fixture
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PostgresController, PostgresController]]:
    base = tmp_path_factory.mktemp("peers")
    p = bootstrapped_primary(make_node_config(base, "p", free_port(), free_port()))
    try:
        query(p._cfg, "CREATE TABLE t (id int PRIMARY KEY)")
        with streaming_standby(p, make_node_config(base, "c", free_port(), free_port())) as r:
            yield p, r
    finally:
        teardown(p)
