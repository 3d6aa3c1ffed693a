"""The logical gate against real servers: a source primary with a subscriber server holding two
subscriptions to the same publication, one through the gate and one directly.

A commit that is on no synchronous standby (a `synchronous_commit = local` commit while the
configured standby is absent) reaches the direct subscription at once: that is the window. The
gated one holds it, with the gate reporting where, until the server would acknowledge it, and
then it arrives. Authentication stays PostgreSQL's: a wrong password through the gate is refused.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgwarden.config.schema import NodeConfig
from pgwarden.core.gate import GATE_PARAMETER
from pgwarden.core.model import lsn_to_int
from pgwarden.gate.server import GateServer
from pgwarden.gate.start import gate_for
from pgwarden.postgres.controller import PostgresController
from tests.support.pg import (
    NEEDS_POSTGRES,
    SUPERPASS,
    SUPERUSER,
    bootstrapped_primary,
    make_node_config,
    teardown,
)
from tests.support.ports import free_port
from tests.support.wait import wait_for

pytestmark = [NEEDS_POSTGRES]
LOGICAL = {"wal_level": "logical", "max_wal_senders": "20", "max_replication_slots": "20"}


@dataclass
class Pair:
    src: PostgresController
    dst: PostgresController
    gate: GateServer
    gate_port: int

    def sql(self, ctl: PostgresController, text: str, db: str = "postgres",
            **settings: str) -> list[tuple[Any, ...]]:
        pg = ctl._cfg.postgresql
        with psycopg.connect(host="127.0.0.1", port=pg.port, user=SUPERUSER, password=SUPERPASS,
                             dbname=db, autocommit=True, connect_timeout=5) as conn:
            for k, v in settings.items():
                conn.execute(f"SET {k} = {v}")
            cur = conn.execute(text)
            return cur.fetchall() if cur.description else []

    def conninfo(self, port: int) -> str:
        return f"host=127.0.0.1 port={port} user={SUPERUSER} password={SUPERPASS} dbname=postgres"


def _cfg(base: Path, name: str, **extra: Any) -> NodeConfig:
    return make_node_config(base, name, free_port(), free_port(), parameters=LOGICAL, **extra)


@pytest.fixture
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    base = tmp_path_factory.mktemp("gate")
    gate_port = free_port()
    src = bootstrapped_primary(_cfg(base, "src", logical_gate_port=gate_port))
    dst: PostgresController | None = None
    gate = gate_for(src._cfg, src.local_params)
    assert gate is not None
    try:
        gate.start()
        dst = bootstrapped_primary(_cfg(base, "dst"))
        p = Pair(src, dst, gate, gate_port)
        p.sql(src, "CREATE TABLE t (id int PRIMARY KEY)")
        p.sql(src, "INSERT INTO t VALUES (1)")
        p.sql(src, "CREATE PUBLICATION pub FOR TABLE t")
        for db, port in (("gated", gate_port), ("direct", src._cfg.postgresql.port)):
            p.sql(dst, f"CREATE DATABASE {db}")
            p.sql(dst, "CREATE TABLE t (id int PRIMARY KEY)", db=db)
            p.sql(dst, f"CREATE SUBSCRIPTION sub_{db} CONNECTION '{p.conninfo(port)}' PUBLICATION pub",
                  db=db)
        yield p
    finally:
        gate.stop()
        if dst is not None:
            teardown(dst)
        teardown(src)


def ids(p: Pair, db: str) -> set[int]:
    return {r[0] for r in p.sql(p.dst, "SELECT id FROM t", db=db)}


def sent(p: Pair, sub: str) -> int:
    rows = p.sql(p.src, f"SELECT sent_lsn FROM pg_stat_replication WHERE application_name = '{sub}'")
    return lsn_to_int(rows[0][0]) or 0 if rows else 0


def set_standby_names(p: Pair, value: str) -> None:
    p.sql(p.src, f"ALTER SYSTEM SET synchronous_standby_names = '{value}'")
    p.sql(p.src, "SELECT pg_reload_conf()")
    wait_for(lambda: p.sql(p.src, "SHOW synchronous_standby_names") == [(value,)], 10,
             "the server to run with the new synchronous_standby_names")


def test_a_commit_on_no_synchronous_standby_waits_at_the_gate_and_arrives_once_confirmed(pair: Pair) -> None:
    p = pair
    wait_for(lambda: ids(p, "gated") == {1} and ids(p, "direct") == {1}, 60,
             "the initial copy through both subscriptions")
    set_standby_names(p, "ghost")  # a synchronous standby that never connects
    p.sql(p.src, "INSERT INTO t VALUES (2)", synchronous_commit="local")  # flushed here only
    commit = lsn_to_int(p.sql(p.src, "SELECT pg_current_wal_flush_lsn()")[0][0]) or 0

    # The window: the direct subscription applies a commit no standby has.
    wait_for(lambda: 2 in ids(p, "direct"), 30, "the direct subscription to apply the local commit")
    # The walsender behind the gate sent it too, and the gate holds it there.
    wait_for(lambda: sent(p, "sub_gated") >= commit, 30, "the gated walsender to send past the commit")
    wait_for(lambda: p.gate.holding(), 30, "the gate to hold the commit")
    assert ids(p, "gated") == {1}
    assert p.gate.holding()[0] <= commit

    set_standby_names(p, "")  # no synchronous standby: the server acknowledges at its flush
    wait_for(lambda: ids(p, "gated") == {1, 2}, 30, "the commit to pass the gate once confirmed")
    wait_for(lambda: not p.gate.holding(), 10, "the gate to hold nothing")


def walsender(p: Pair, sub: str) -> int | None:
    rows = p.sql(p.src, f"SELECT pid FROM pg_stat_replication WHERE application_name = '{sub}'")
    return int(rows[0][0]) if rows else None


def test_a_walsender_that_ends_while_a_commit_is_held_ends_the_subscribers_connection_at_once(
        pair: Pair) -> None:
    """A fenced or crashed primary: its walsender is gone while the gate holds a commit. The gate
    must close the subscriber's connection then (sending nothing held), so the apply worker
    reconnects within wal_retrieve_retry_interval, rather than after its wal_receiver_timeout
    (60 s) on a connection nobody serves."""
    p = pair
    wait_for(lambda: ids(p, "gated") == {1}, 60, "the initial copy")
    set_standby_names(p, "ghost")
    p.sql(p.src, "INSERT INTO t VALUES (4)", synchronous_commit="local")
    wait_for(lambda: p.gate.holding(), 30, "the gate to hold the commit")
    old = walsender(p, "sub_gated")
    assert old is not None
    p.sql(p.src, f"SELECT pg_terminate_backend({old})")
    # The apply worker restarts after wal_retrieve_retry_interval (5 s): well within 30 s, and
    # never within it while it waits out wal_receiver_timeout (60 s) on the old connection.
    wait_for(lambda: walsender(p, "sub_gated") not in (None, old), 30,
             "the subscriber to reconnect through the gate")
    wait_for(lambda: p.gate.holding(), 30, "the gate to hold the commit again, for the new connection")
    assert ids(p, "gated") == {1}
    set_standby_names(p, "")
    wait_for(lambda: ids(p, "gated") == {1, 4}, 30, "the commit, once confirmed")


def test_a_new_slot_waits_until_its_snapshot_is_confirmed(pair: Pair) -> None:
    """CREATE SUBSCRIPTION's table copy reads the slot's snapshot, which shows local-only commits:
    the slot's answer (its consistent point) waits at the gate until they are confirmed."""
    p = pair
    wait_for(lambda: ids(p, "gated") == {1}, 60, "the initial copy")
    set_standby_names(p, "ghost")
    p.sql(p.src, "INSERT INTO t VALUES (3)", synchronous_commit="local")
    p.sql(p.dst, "CREATE DATABASE late")
    p.sql(p.dst, "CREATE TABLE t (id int PRIMARY KEY)", db="late")
    done: list[BaseException | None] = []

    def subscribe() -> None:
        try:
            p.sql(p.dst, f"CREATE SUBSCRIPTION sub_late CONNECTION '{p.conninfo(p.gate_port)}' "
                         f"PUBLICATION pub", db="late")
            done.append(None)
        except BaseException as e:  # reported below
            done.append(e)

    t = threading.Thread(target=subscribe, daemon=True)
    t.start()
    # The gate holds the existing subscription's stream too (the same local-only commit), so its
    # holding says nothing about the new slot until that slot exists: wait for both.
    wait_for(lambda: p.sql(p.src, "SELECT count(*) FROM pg_replication_slots "
                                  "WHERE slot_name = 'sub_late'") == [(1,)] and bool(p.gate.holding()),
             30, "the new slot made on the source and the gate holding")
    # Not let through: CREATE SUBSCRIPTION would return within moments of the slot's answer.
    t.join(1.0)
    assert not done, f"CREATE SUBSCRIPTION returned while its slot's answer should wait: {done}"
    set_standby_names(p, "")
    t.join(30)
    assert done == [None]
    wait_for(lambda: ids(p, "late") == {1, 3}, 60, "the table copy, including the confirmed commit")


def test_the_gate_announces_itself_and_leaves_authentication_to_postgresql(pair: Pair) -> None:
    p = pair
    with psycopg.connect(p.conninfo(p.gate_port), autocommit=True, connect_timeout=5) as conn:
        assert conn.info.parameter_status(GATE_PARAMETER) == "on"
        assert conn.execute("SELECT 40 + 2").fetchone() == (42,)
    with psycopg.connect(p.conninfo(p.src._cfg.postgresql.port), connect_timeout=5) as conn:
        assert conn.info.parameter_status(GATE_PARAMETER) is None
    bad = p.conninfo(p.gate_port).replace(SUPERPASS, "not-the-password")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(bad, connect_timeout=5).close()
