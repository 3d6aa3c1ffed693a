"""A slot is copied to a standby only if the standby still has the WAL the copy starts decoding
at (postgres/slot_copies.has_wal_at, rule 19 on 15/16).

A copy whose restart_lsn lies in a segment the standby removed can never decode: PostgreSQL
refuses to advance it ("requested WAL segment ... has already been removed"), the agent drops it,
and the next loop copied it again and restarted the standby to load it, for nothing, every few
seconds. The 15-gate integration test found it after a failover (the new primary's slot started
in a segment its standby had recycled); in strict synchronous mode each of those restarts held
every commit up. Here a real standby recycles the segment of a real slot's restart_lsn."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgwarden.core.model import lsn_to_int
from pgwarden.postgres import slot_copies
from pgwarden.postgres.controller import PostgresController
from tests.support.pg import (
    NEEDS_POSTGRES,
    bootstrapped_primary,
    connect,
    make_node_config,
    primary_and_standby,
    teardown,
)
from tests.support.ports import free_port
from tests.support.wait import wait_for

PG15 = "/usr/lib/postgresql/15/bin"
HAS_15 = (Path(PG15) / "postgres").exists()
pytestmark = NEEDS_POSTGRES
HOST = "127.0.0.1"
PARAMS = {"wal_level": "logical", "hot_standby_feedback": "on", "wal_keep_size": "0"}


def conn(ctl: PostgresController) -> psycopg.Connection[Any]:
    return connect(ctl._cfg)


@pytest.mark.parametrize("bin_dir", [
    None, pytest.param(PG15, marks=pytest.mark.skipif(not HAS_15, reason="needs Debian's PostgreSQL 15"))],
    ids=["18", "15"])
def test_the_restart_lsn_read_from_a_real_state_file(tmp_path: Path, bin_dir: str | None) -> None:
    p = bootstrapped_primary(make_node_config(tmp_path, "p", free_port(), free_port(), parameters=PARAMS,
                                              bin_dir=bin_dir))
    try:
        with conn(p) as c:
            c.execute("SELECT pg_create_logical_replication_slot('s', 'test_decoding')")
            c.execute("CHECKPOINT")  # the state file is written as the slot is in memory
            row = c.execute("SELECT restart_lsn::text FROM pg_replication_slots WHERE slot_name = 's'"
                            ).fetchone()
            state = c.execute("SELECT pg_read_binary_file('pg_replslot/s/state')").fetchone()
        assert row is not None and state is not None
        assert slot_copies.state_restart_lsn(bytes(state[0])) == lsn_to_int(row[0])
        assert slot_copies.state_restart_lsn(b"not a state file" * 10) is None
    finally:
        teardown(p)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[PostgresController, PostgresController]]:
    if not HAS_15:
        pytest.skip(f"needs Debian's PostgreSQL 15 in {PG15}: slots are copied by the agents on 15 and 16")
    with primary_and_standby(tmp_path, PARAMS, PG15) as both:
        yield both


def test_a_slot_starting_in_wal_the_standby_recycled_is_not_copied(
        pair: tuple[PostgresController, PostgresController]) -> None:
    p, r = pair
    with conn(p) as c:
        c.execute("SELECT pg_create_logical_replication_slot('old', 'test_decoding')")
        c.execute("CHECKPOINT")
        start = c.execute("SELECT restart_lsn::text FROM pg_replication_slots WHERE slot_name = 'old'"
                          ).fetchone()
    assert start is not None
    restart = lsn_to_int(start[0]) or 0
    with conn(r) as c:
        assert slot_copies.has_wal_at(c, restart)
    # The primary keeps the slot's WAL; the standby, with nothing holding it, recycles it at its
    # next restartpoints once the primary has moved a few segments on and checkpointed.
    with conn(p) as c:
        c.execute("CREATE TABLE t (id int)")
        for i in range(4):
            c.execute(f"INSERT INTO t VALUES ({i})")
            c.execute("SELECT pg_switch_wal()")
        c.execute("CHECKPOINT")
        flush = c.execute("SELECT pg_current_wal_flush_lsn()").fetchone()

    def recycled() -> bool:
        with conn(r) as c:
            c.execute("CHECKPOINT")  # a restartpoint, once the primary's checkpoint is replayed
            return c.execute("SELECT pg_last_wal_replay_lsn() >= %s", flush).fetchone() == (True,) \
                and not slot_copies.has_wal_at(c, restart)

    wait_for(recycled, 30, "the standby to recycle the segment of the slot's restart_lsn")
    assert r.copy_logical_slots(frozenset({"old"}), HOST, p._cfg.postgresql.port, 10) == []
    assert not (r.data_dir / "pg_replslot" / "old").exists()
    # Once the primary's slot starts in WAL the standby has, the copy is made.
    with conn(p) as c:
        c.execute("SELECT pg_replication_slot_advance('old', pg_current_wal_lsn())")
        c.execute("CHECKPOINT")
    wait_for(lambda: r.copy_logical_slots(frozenset({"old"}), HOST, p._cfg.postgresql.port, 10) == ["old"],
             30, "the copy once the slot starts in WAL the standby has")
    assert (r.data_dir / "pg_replslot" / "old" / "state").exists()
