"""A copied logical slot decodes the promoted standby's first transactions (rule 19, PostgreSQL 15).

A slot copy starts decoding at its restart_lsn. Without the primary's serialized snapshot there,
the decoder builds one, and it is consistent only once the transactions running at that point
have ended. A writer keeps one running, so before the fix consistency came after the new
timeline had begun, and the new primary's first commits were skipped. The benchmark found it
(bench/logical.py on a 15 source: the subscriber lacked the first 181-198 rows the new primary
took). Here a transaction is left open on the primary while the standby copies the slot, so the
copy can only become consistent through the primary's snapshot. The standby's checkpointer and
background writer are stopped before the promotion (no xl_running_xacts on the new timeline),
a row is committed, and the slot must decode it.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgwarden.core.model import lsn_to_int
from pgwarden.postgres.controller import PostgresController
from tests.support.pg import (
    NEEDS_POSTGRES,
    connect,
    primary_and_standby,
)
from tests.support.wait import wait_for

PG15 = "/usr/lib/postgresql/15/bin"
pytestmark = [
    NEEDS_POSTGRES,
    pytest.mark.skipif(not (Path(PG15) / "postgres").exists(),
                       reason=f"needs Debian's PostgreSQL 15 in {PG15} (apt install postgresql-15): "
                              f"slots are copied by the agents on 15 and 16 only"),
]
HOST = "127.0.0.1"
PARAMS = {"wal_level": "logical", "hot_standby_feedback": "on"}


def conn(ctl: PostgresController) -> psycopg.Connection[Any]:
    return connect(ctl._cfg)


def replayed(ctl: PostgresController, lsn: Any) -> bool:
    with conn(ctl) as c:
        return c.execute("SELECT pg_last_wal_replay_lsn() >= %s", lsn).fetchone() == (True,)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[PostgresController, PostgresController]]:
    with primary_and_standby(tmp_path, PARAMS, PG15) as both:
        yield both


def test_the_promoted_standbys_first_commit_is_decoded_from_the_copied_slot(
        pair: tuple[PostgresController, PostgresController]) -> None:
    p, r = pair
    with conn(p) as c:
        c.execute("CREATE TABLE t (id int PRIMARY KEY)")
        created = c.execute("SELECT lsn FROM pg_create_logical_replication_slot('sub', 'test_decoding')"
                            ).fetchone()
        assert created is not None
    # An xid running at every xl_running_xacts from here on, never committed; it writes nothing,
    # so the slot's restart_lsn may move past its start (a transaction with changes would hold it).
    held = conn(p)
    held.execute("BEGIN")
    held.execute("SELECT txid_current()")
    with conn(p) as c:
        for i in (1, 2):  # move the slot's restart_lsn onto a running_xacts that shows `held`
            c.execute("CHECKPOINT")
            c.execute(f"INSERT INTO t VALUES ({i})")
            c.execute("SELECT pg_replication_slot_advance('sub', pg_current_wal_lsn())")
        moved = c.execute("SELECT restart_lsn > %s::pg_lsn FROM pg_replication_slots WHERE slot_name = 'sub'",
                          created).fetchone()
        assert moved == (True,), "the slot's restart_lsn did not move onto a snapshot with `held` running"
        c.execute("INSERT INTO t VALUES (3)")  # after the slot's position: to be decoded
        flush = c.execute("SELECT pg_current_wal_flush_lsn()").fetchone()
    wait_for(lambda: replayed(r, flush), 30, "the standby to replay past the slot")
    assert r.copy_logical_slots(frozenset({"sub"}), HOST, p._cfg.postgresql.port, 10) == ["sub"]
    r.stop("fast", 30)
    r.start(role="replica", upstream=("p", HOST, p._cfg.postgresql.port), wait_timeout=30)
    wait_for(lambda: replayed(r, flush), 30, "the standby to start again")
    # What the agent does every loop on a standby with copies: advance them to the primary's
    # position (and, first, fetch the snapshot each copy starts decoding from).
    with conn(p) as c:
        target = c.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots "
                           "WHERE slot_name = 'sub'").fetchone()
    assert target is not None
    r.advance_logical_slots((("sub", lsn_to_int(target[0]) or 0),), 10)
    p.stop("immediate", 30)  # the open transaction dies with it
    with contextlib.suppress(psycopg.Error):
        held.close()
    # No xl_running_xacts after the promotion until the new primary's first commit is decoded:
    # a decoder that still had to build its snapshot could not be consistent before it.
    with conn(r) as c:
        quiet = [int(pid) for (pid,) in c.execute(
            "SELECT pid FROM pg_stat_activity WHERE backend_type IN ('checkpointer', 'background writer')")]
    assert len(quiet) == 2
    for pid in quiet:
        os.kill(pid, signal.SIGSTOP)
    try:
        r.promote(timeout=30)
        with conn(r) as c:
            c.execute("INSERT INTO t VALUES (4)")  # the new timeline's first commit
            got = c.execute("SELECT data FROM pg_logical_slot_get_changes('sub', NULL, NULL)").fetchall()
    finally:
        for pid in quiet:
            os.kill(pid, signal.SIGCONT)
    inserted = [d for (d,) in got if d.startswith("table public.t: INSERT")]
    assert inserted == ["table public.t: INSERT: id[integer]:3", "table public.t: INSERT: id[integer]:4"], got
