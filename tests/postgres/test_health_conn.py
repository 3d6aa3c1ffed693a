"""The loop's kept health connection (postgres/health_conn.py) against a real PostgreSQL: one
backend across loops, no unhealthy loop when the server ends it or restarts, a frozen postmaster
still unhealthy within the timeout, and TCP left to a connection per loop."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgwarden.core.model import ReplicationStat, lsn_to_int
from pgwarden.postgres import sql
from pgwarden.postgres.controller import PostgresController
from pgwarden.postgres.health_conn import HealthConnection, PostmasterSilent, postmaster_answers, unix_socket
from pgwarden.postgres.sql import ConnParams
from tests.support.pg import (
    NEEDS_POSTGRES,
    SUPERPASS,
    SUPERUSER,
    bootstrapped_primary,
    make_node_config,
    query,
    teardown,
)
from tests.support.ports import free_port
from tests.support.wait import wait_for


def test_unix_socket_path() -> None:
    assert unix_socket(ConnParams(host="/run/pg/", port=5433, user="u")) == "/run/pg/.s.PGSQL.5433"
    assert unix_socket(ConnParams(host="127.0.0.1", port=5433, user="u")) is None


def test_a_listener_that_never_answers_is_silent_within_the_timeout(tmp_path: Path) -> None:
    # A socket that accepts (the kernel's backlog) but never answers: a frozen postmaster.
    path = str(tmp_path / ".s.PGSQL.1")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(path)
        server.listen(4)
        started = time.monotonic()
        with pytest.raises(PostmasterSilent):
            postmaster_answers(path, 0.3)
        assert time.monotonic() - started < 1.0
    with pytest.raises(PostmasterSilent):  # nobody listens any more
        postmaster_answers(path, 0.3)


@pytest.fixture(scope="module")
def primary(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresController]:
    cfg = make_node_config(tmp_path_factory.mktemp("health"), "p", free_port(), free_port())
    p = bootstrapped_primary(cfg)
    try:
        yield p
    finally:
        teardown(p)


def _kept_backend(p: PostgresController) -> int:
    conn = p._health._conn
    assert conn is not None, "the loop keeps no connection"
    return int(conn.info.backend_pid)


@pytest.mark.integration
@NEEDS_POSTGRES
def test_loops_share_one_backend(primary: PostgresController) -> None:
    assert primary.observe(2).healthy
    first = _kept_backend(primary)
    for _ in range(3):
        assert primary.observe(2).healthy
    assert _kept_backend(primary) == first
    rows = query(primary._cfg, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (first,))
    assert rows == [(1,)]


@pytest.mark.integration
@NEEDS_POSTGRES
def test_a_terminated_kept_session_costs_no_unhealthy_loop(primary: PostgresController) -> None:
    assert primary.observe(2).healthy
    old = _kept_backend(primary)
    assert query(primary._cfg, "SELECT pg_terminate_backend(%s)", (old,)) == [(True,)]
    wait_for(lambda: query(primary._cfg, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s",
                           (old,)) == [(0,)], 10, "the terminated backend to exit")
    assert primary.observe(2).healthy
    assert _kept_backend(primary) != old


@pytest.mark.integration
@NEEDS_POSTGRES
def test_a_frozen_postmaster_is_unhealthy_although_the_kept_session_answers(
        primary: PostgresController) -> None:
    assert primary.observe(2).healthy
    kept = _kept_backend(primary)
    pid = primary.postmaster_pid()
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        v = primary.observe(0.5)
        assert time.monotonic() - started < 1.0
        assert v.running and not v.healthy
        # The kept backend itself still answers: only the postmaster check can have told.
        assert primary._health._conn is None or _kept_backend(primary) == kept
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(lambda: primary.observe(2).healthy, 20, "healthy again after SIGCONT")


@pytest.mark.integration
@NEEDS_POSTGRES
def test_the_first_loop_after_a_restart_is_healthy(primary: PostgresController) -> None:
    assert primary.observe(2).healthy
    old = _kept_backend(primary)
    primary.stop("fast", 20)
    primary.start(role="primary", upstream=None, wait_timeout=30)
    assert primary.observe(2).healthy
    assert _kept_backend(primary) != old


@pytest.mark.integration
@NEEDS_POSTGRES
def test_over_tcp_each_query_has_a_connection_of_its_own(primary: PostgresController) -> None:
    pg = primary._cfg.postgresql
    pid = primary.postmaster_pid()
    assert pid is not None
    hc = HealthConnection()
    params = ConnParams(host=pg.listen_address, port=pg.port, user=SUPERUSER, password=SUPERPASS)
    assert hc.query(params, pid, 2.0).in_recovery is False
    assert hc._conn is None


def _cursor_health(conn: psycopg.Connection[Any]) -> sql.Health:
    """The health query through psycopg's cursor and its typed values: the code the libpq-level
    `query_health` replaced (issue 16), kept here as the reference answer."""
    row = conn.execute(sql.HEALTH_QUERY).fetchone()
    assert row is not None
    reps = row[11] if not isinstance(row[11], str) else json.loads(row[11])
    return sql.Health(
        in_recovery=bool(row[0]), system_id=str(row[1]),
        timeline=None if row[2] is None else int(row[2]),
        current_lsn=lsn_to_int(row[3]), received_lsn=lsn_to_int(row[4]),
        replayed_lsn=lsn_to_int(row[5]), receiver_status=row[6], sender_host=row[7],
        sender_port=None if row[8] is None else int(row[8]), pending_restart=bool(row[9]),
        sync_standby_names=str(row[10]),
        replication=tuple(ReplicationStat(name=str(r.get("name") or ""), state=str(r.get("state") or ""),
                                          sync_state=str(r.get("sync_state") or ""),
                                          flush_lsn=lsn_to_int(r.get("flush_lsn"))) for r in reps or []),
        version_num=int(row[12]),
    )


@pytest.mark.integration
@NEEDS_POSTGRES
def test_the_libpq_level_query_gives_the_cursors_answer(primary: PostgresController) -> None:
    params = primary.local_params()
    with sql.connect(params, 2.0) as conn:
        want = _cursor_health(conn)
        sql.prepare_health(conn)
        for got in (sql.query_health(conn), sql.query_health(conn, prepared=True)):
            # The server may write WAL in between (a checkpoint): the LSN only moves forward.
            assert replace(got, current_lsn=want.current_lsn) == want
            assert got.current_lsn is not None and want.current_lsn is not None
            assert got.current_lsn >= want.current_lsn
        assert want.in_recovery is False and want.version_num >= 100000
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE  # usable as before


def test_health_from_text_reads_a_replicas_row() -> None:
    row = ["t", "7300000000000000001", "3", None, "0/3000148", "0/3000110", "streaming",
           "10.0.0.1", "5432", "f", "", "[]", "180001"]
    h = sql.health_from_text(row)
    assert h.in_recovery is True and h.pending_restart is False and h.timeline == 3
    assert (h.current_lsn, h.received_lsn, h.replayed_lsn) == (None, 0x3000148, 0x3000110)
    assert h.lsn == 0x3000148 and h.sender_port == 5432 and h.replication == ()
    primary_row = ["f", "1", "1", "0/5000000", None, None, None, None, None, "t", "ANY 1 (a)",
                   '[{"name": "a", "state": "streaming", "sync_state": "quorum", "flush_lsn": "0/4000000"}]',
                   "180001"]
    p = sql.health_from_text(primary_row)
    assert p.in_recovery is False and p.pending_restart is True and p.receiver_status is None
    assert p.replication == (ReplicationStat("a", "streaming", "quorum", 0x4000000),)
    with pytest.raises(psycopg.InterfaceError):
        sql.health_from_text(row[:-1])


@pytest.mark.integration
@NEEDS_POSTGRES
def test_the_connection_parameters_follow_the_socket(primary: PostgresController) -> None:
    first = primary.local_params()
    assert first.host.startswith("/")
    assert primary.local_params() is first  # built once while nothing they come from changed
    sock = f"{first.host}/.s.PGSQL.{first.port}"
    os.rename(sock, sock + ".away")
    try:
        assert not primary.local_params().host.startswith("/")  # no socket: TCP
    finally:
        os.rename(sock + ".away", sock)
    assert primary.local_params() == first


@pytest.mark.integration
@NEEDS_POSTGRES
def test_a_kept_session_is_asked_from_the_loops_own_thread(primary: PostgresController) -> None:
    assert primary.observe(2).healthy  # opens the session if none is kept (on the probe thread)
    handed_over = primary._prober._last
    kept = _kept_backend(primary)
    for _ in range(3):
        assert primary.observe(2).healthy
    assert primary._prober._last is handed_over  # nothing more handed to the probe thread
    assert _kept_backend(primary) == kept


@pytest.mark.integration
@NEEDS_POSTGRES
def test_a_frozen_kept_backend_is_unhealthy_in_time_then_replaced(primary: PostgresController) -> None:
    assert primary.observe(2).healthy
    frozen = _kept_backend(primary)
    os.kill(frozen, signal.SIGSTOP)
    try:
        started = time.monotonic()
        v = primary.observe(0.5)
        assert time.monotonic() - started < 1.0
        assert v.running and not v.healthy
        assert primary._health._conn is None  # a session with a query in flight is dropped
        # The postmaster and a new backend answer: the next loop is healthy, the old one frozen.
        assert primary.observe(2).healthy
        assert _kept_backend(primary) != frozen
    finally:
        os.kill(frozen, signal.SIGCONT)


def test_the_same_row_is_the_same_answer_and_a_changed_row_a_new_one() -> None:
    row = ["t", "1", "3", None, "0/3000148", "0/3000110", "streaming", "h", "5432", "f", "", "[]", "180001"]
    first = sql.health_from_text(row)
    assert sql.health_from_text(list(row)) is first  # parsed once while the text stays the same
    moved = sql.health_from_text([*row[:4], "0/3000200", *row[5:]])
    assert moved.received_lsn == 0x3000200 and first.received_lsn == 0x3000148
    assert sql.health_from_text(row) == first
