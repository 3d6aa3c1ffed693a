"""A logical gate in front of a standby (real servers, PostgreSQL 18, where logical decoding on
a standby works): a standby confirms nothing (core/gate.py), so instead of holding a client for
ever the gate ends its connection with an error that says where to go. A gate in front of a
standby is normal (every member runs one; `dsn --logical` lists them all and libpq's
target_session_attrs=read-write skips the standbys): only a client that came to a standby on
purpose meets this."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgwarden.gate.relay import IN_RECOVERY
from pgwarden.gate.start import gate_for
from pgwarden.postgres.controller import PostgresController
from tests.support.pg import (
    NEEDS_POSTGRES,
    SUPERPASS,
    SUPERUSER,
    bootstrapped_primary,
    make_node_config,
    query,
    streaming_standby,
    teardown,
)
from tests.support.ports import free_port

pytestmark = [NEEDS_POSTGRES]
PARAMS = {"wal_level": "logical", "hot_standby_feedback": "on"}
HOST = "127.0.0.1"


@pytest.fixture
def standby(tmp_path: Path) -> Iterator[tuple[PostgresController, PostgresController, int]]:
    p = bootstrapped_primary(make_node_config(tmp_path, "p", free_port(), free_port(), parameters=PARAMS))
    gate_port = free_port()
    try:
        with streaming_standby(p, make_node_config(tmp_path, "r", free_port(), free_port(), parameters=PARAMS,
                                                  logical_gate_port=gate_port)) as r:
            yield p, r, gate_port
    finally:
        teardown(p)


def test_a_slot_made_through_a_standbys_gate_is_refused_with_where_to_go(
        standby: tuple[PostgresController, PostgresController, int]) -> None:
    p, r, gate_port = standby
    gate = gate_for(r._cfg, r.local_params)
    assert gate is not None
    gate.start()
    try:
        # The standby builds the slot's snapshot from the primary's next running-xacts record.
        query(p._cfg, "SELECT pg_log_standby_snapshot()")
        # psql, a client in a process of its own, on a replication connection through the gate.
        conninfo = (f"host={HOST} port={gate_port} user={SUPERUSER} dbname=postgres "
                    f"replication=database connect_timeout=5")
        started = time.monotonic()
        out = subprocess.run([str(Path(r.bin_dir) / "psql"), conninfo, "-X", "-c",
                              "CREATE_REPLICATION_SLOT on_standby LOGICAL pgoutput"],
                             capture_output=True, text=True, timeout=60,
                             env={**os.environ, "PGPASSWORD": SUPERPASS})
        took = time.monotonic() - started
        assert out.returncode != 0, f"the gate passed a standby's slot answer: {out.stdout}"
        assert IN_RECOVERY in out.stderr, out.stderr
        assert took < 30, f"refused only after {took:.1f}s"
    finally:
        gate.stop()
