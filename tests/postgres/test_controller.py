"""PostgresController against real PostgreSQL servers: bootstrap, clone, sync, promote, rewind,
demote, and observing a frozen postmaster."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import pytest

from pgwarden.config.schema import ClusterSettings
from pgwarden.core.actions import EnsureSlots
from pgwarden.core.model import NO_SYNC, DataState, SyncConfig, lsn_to_int
from pgwarden.postgres.controller import PostgresController, PostgresError
from tests.support.pg import (
    NEEDS_POSTGRES,
    bootstrapped_primary,
    connect,
    controller,
    make_node_config,
    query,
    teardown,
)
from tests.support.ports import free_port
from tests.support.wait import wait_for

pytestmark = [
    pytest.mark.integration,
    NEEDS_POSTGRES,
]

HOST = "127.0.0.1"


class Pair:
    def __init__(self, primary: PostgresController, replica: PostgresController) -> None:
        self.p = primary
        self.r = replica

    def up(self) -> tuple[str, str, int]:
        return ("p", HOST, self.p._cfg.postgresql.port)


def _clone_replica(base: Path, name: str, source: PostgresController) -> PostgresController:
    cfg = make_node_config(base, name, free_port(), free_port())
    ctl = controller(cfg)
    source.ensure_slots({name} | _slots(source))
    ctl.clone(HOST, source._cfg.postgresql.port, timeout=60)
    return ctl


def _slots(ctl: PostgresController) -> set[str]:
    return {str(r[0]) for r in query(ctl._cfg, "SELECT slot_name FROM pg_replication_slots")}


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    base = tmp_path_factory.mktemp("pair")
    p = bootstrapped_primary(make_node_config(base, "p", free_port(), free_port()))
    started: list[PostgresController] = [p]
    try:
        query(p._cfg, "CREATE TABLE t (id int PRIMARY KEY, note text)")
        r = _clone_replica(base, "r1", p)
        started.append(r)
        r.start(role="replica", upstream=("p", HOST, p._cfg.postgresql.port), wait_timeout=30)
        yield Pair(p, r)
    finally:
        for ctl in started:
            teardown(ctl)


def test_primary_observed(pair: Pair) -> None:
    v = wait_for(lambda: (lambda v: v if v.healthy else None)(pair.p.observe(2)), 10, "healthy")
    assert v.data is DataState.VALID and v.running and v.in_recovery is False
    assert v.timeline == 1 and v.lsn and v.lsn > 0
    assert v.system_id and v.version == 18
    assert v.postmaster_pid == pair.p.postmaster_pid()
    assert v.upstream is None and v.sync == NO_SYNC
    assert v.sync_applied_lsn is not None


def test_replica_streams_rows(pair: Pair) -> None:
    query(pair.p._cfg, "INSERT INTO t VALUES (1, 'one')")
    wait_for(lambda: query(pair.r._cfg, "SELECT note FROM t WHERE id = 1") == [("one",)], 20,
             "row 1 on the replica")
    v = wait_for(lambda: (lambda v: v if v.streaming else None)(pair.r.observe(2)), 20, "streaming")
    assert v.in_recovery is True and v.upstream == "p" and v.timeline == 1
    assert v.system_id == pair.p.observe(2).system_id
    assert v.received_lsn and v.replayed_lsn and v.lsn == max(v.received_lsn, v.replayed_lsn)
    assert v.replication == () and v.sync_applied_lsn is None
    pv = pair.p.observe(2)
    assert [(s.name, s.state, s.sync_state) for s in pv.replication] == [("r1", "streaming", "async")]
    assert _slots(pair.p) == {"r1"}


def test_sync_standby_holds_commits(pair: Pair) -> None:
    p, r = pair.p, pair.r
    try:
        p.set_sync(SyncConfig(1, frozenset({"r1"})))
        v = p.observe(2)
        assert v.sync == SyncConfig(1, frozenset({"r1"})) and v.sync_applied_lsn is not None
        wait_for(lambda: [s.sync_state for s in p.observe(2).replication] == ["quorum"], 20,
                 "r1 as a synchronous standby")

        r.stop("fast", 20)
        stopped = r.observe(2)
        assert not stopped.running and stopped.was_primary is False
        assert stopped.clean_shutdown is True and stopped.timeline == 1
        assert stopped.checkpoint_lsn and stopped.system_id == v.system_id

        done = threading.Event()

        def write() -> None:
            with connect(p._cfg) as conn:
                conn.execute("INSERT INTO t VALUES (2, 'waits for r1')")
            done.set()

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        assert not done.wait(1.0), "commit returned with its only synchronous standby down"
        r.start(role="replica", upstream=pair.up(), wait_timeout=30)
        assert done.wait(30), "commit did not return after the standby came back"
        writer.join(5)
    finally:
        if r.postmaster_pid() is None:
            r.start(role="replica", upstream=pair.up(), wait_timeout=30)
        p.set_sync(NO_SYNC)
    assert p.observe(2).sync == NO_SYNC


def test_slots_and_reconfigure(pair: Pair) -> None:
    p = pair.p
    p.ensure_slots({"r1", "Extra-Node"})
    assert _slots(p) == {"r1", "extra_node"}
    p.ensure_slots({"r1"})
    assert _slots(p) == {"r1"}  # inactive stranger dropped, active r1 kept

    assert p.reconfigure(None, NO_SYNC, ClusterSettings(parameters={"work_mem": "8MB"})) is False
    assert query(p._cfg, "SHOW work_mem") == [("8MB",)]
    assert p.reconfigure(None, NO_SYNC, ClusterSettings(parameters={"max_connections": 120})) is True
    assert p.observe(2).pending_restart is True
    assert p.reconfigure(None, NO_SYNC, ClusterSettings()) is False

    # A replica's upstream changes by reload alone.
    assert pair.r.reconfigure(pair.up(), NO_SYNC, ClusterSettings()) is False


def test_frozen_postmaster_is_unhealthy_within_timeout(pair: Pair) -> None:
    p = pair.p
    pid = p.postmaster_pid()
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        v = p.observe(0.5)
        elapsed = time.monotonic() - t0
        assert elapsed < 1.0, elapsed
        assert v.running and not v.healthy and v.postmaster_pid == pid
        v2 = p.observe(0.3)
        assert v2.running and not v2.healthy
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(lambda: p.observe(2).healthy, 20, "healthy again after SIGCONT")


def test_failover_rewind_and_demote(tmp_path: Path) -> None:
    a = bootstrapped_primary(make_node_config(tmp_path, "a", free_port(), free_port()))
    b: PostgresController | None = None
    try:
        a_port = a._cfg.postgresql.port
        query(a._cfg, "CREATE TABLE t (id int PRIMARY KEY, note text)")
        query(a._cfg, "INSERT INTO t VALUES (1, 'before')")
        b = _clone_replica(tmp_path, "b", a)
        b_port = b._cfg.postgresql.port
        b.start(role="replica", upstream=("a", HOST, a_port), wait_timeout=30)
        wait_for(lambda: query(b._cfg, "SELECT count(*) FROM t") == [(1,)], 20, "row 1 on b")

        b.promote(20)
        vb = b.observe(2)
        assert vb.in_recovery is False and vb.timeline == 2 and vb.upstream is None
        assert not (b.data_dir / "standby.signal").exists()
        history = b.read_timeline_history(2)
        assert len(history) == 1 and history[0][0] == 1 and history[0][1] > 0

        # The old primary keeps writing on timeline 1: a fork pg_rewind must undo.
        query(a._cfg, "INSERT INTO t VALUES (99, 'forked')")
        a.stop("fast", 20)
        va = a.observe(2)
        assert va.was_primary is True and va.clean_shutdown is True and va.timeline == 1

        b.ensure_slots({"a"})
        query(b._cfg, "INSERT INTO t VALUES (2, 'after promote')")
        assert a.rewind(HOST, b_port, 60) is True
        a.start(role="replica", upstream=("b", HOST, b_port), wait_timeout=30)
        wait_for(lambda: query(a._cfg, "SELECT id FROM t ORDER BY id") == [(1,), (2,)], 30,
                 "a on b's timeline without the forked row")
        va = wait_for(lambda: (lambda v: v if v.streaming else None)(a.observe(2)), 20, "a streams")
        assert va.timeline == 2 and va.upstream == "b" and va.in_recovery is True

        # Demote without an upstream: a read-only standby that follows nobody.
        b.demote(None, 30)
        vb = wait_for(lambda: (lambda v: v if v.healthy else None)(b.observe(2)), 20, "b healthy")
        assert vb.in_recovery is True and vb.upstream is None and not vb.streaming
        assert (b.data_dir / "standby.signal").exists()
    finally:
        teardown(a)
        if b is not None:
            teardown(b)


def test_data_states_and_failed_clone(tmp_path: Path) -> None:
    ctl = controller(make_node_config(tmp_path, "c", free_port(), free_port()))
    assert ctl.observe(1).data is DataState.EMPTY
    ctl.data_dir.mkdir(parents=True)
    assert ctl.observe(1).data is DataState.EMPTY
    (ctl.data_dir / "junk").write_text("x")
    v = ctl.observe(1)
    assert v.data is DataState.BROKEN and not v.running
    with pytest.raises(PostgresError, match="not empty"):
        ctl.bootstrap()
    with pytest.raises(PostgresError, match="pg_basebackup"):
        ctl.clone(HOST, free_port(), timeout=20)
    assert ctl.data_state() is DataState.EMPTY
    with pytest.raises(PostgresError, match="no valid data"):
        ctl.start(role="primary", upstream=None, wait_timeout=5)


def test_stop_escalates_on_frozen_postmaster(tmp_path: Path) -> None:
    ctl = bootstrapped_primary(make_node_config(tmp_path, "f", free_port(), free_port()))
    try:
        pid = ctl.postmaster_pid()
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        t0 = time.monotonic()
        ctl.stop("fast", 1.0)
        assert time.monotonic() - t0 < 15
        assert ctl.postmaster_pid() is None
        v = ctl.observe(2)
        assert not v.running and v.was_primary is True and v.clean_shutdown is False
        ctl.start(role="primary", upstream=None, wait_timeout=30)  # crash recovery
        assert wait_for(lambda: ctl.observe(2).healthy, 20, "healthy after crash recovery")
    finally:
        teardown(ctl)


def test_the_agent_makes_sure_of_slots_again_after_its_server_changed(
        pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    """The executor skips the slot query while nothing it knows of changed. A rewind or re-clone
    takes slots away with the wanted set unchanged (a leader that was rewound and leads again):
    a new postmaster, or SLOT_RECHECK seconds, must make it look again."""
    from pgwarden.agent import executor as ex

    p = pair.p
    run = ex.Executor(p._cfg, p, cast(Any, None), cast(Any, None), cast(Any, None), ex.LocalFacts(),
                      ClusterSettings, ClusterSettings())
    pgv = p.observe(2)
    want = ("r1", "r9")
    assert run.run((EnsureSlots(frozenset(want)),), None, pgv)
    assert _slots(p) >= set(want)
    query(p._cfg, "SELECT pg_drop_replication_slot('r9')")
    assert run.run((EnsureSlots(frozenset(want)),), None, pgv)
    assert "r9" not in _slots(p)  # same server, checked moments ago: no query
    restarted = replace(pgv, postmaster_pid=(pgv.postmaster_pid or 0) + 1)
    assert run.run((EnsureSlots(frozenset(want)),), None, restarted)
    assert "r9" in _slots(p)
    query(p._cfg, "SELECT pg_drop_replication_slot('r9')")
    monkeypatch.setattr(ex, "SLOT_RECHECK", 0.0)
    assert run.run((EnsureSlots(frozenset(want)),), None, restarted)
    assert "r9" in _slots(p)
    p.ensure_slots({"r1"})


def _show_sync(ctl: PostgresController) -> str:
    return str(query(ctl._cfg, "SHOW synchronous_standby_names")[0][0])


def _current_lsn(ctl: PostgresController) -> int:
    lsn = lsn_to_int(str(query(ctl._cfg, "SELECT pg_current_wal_lsn()::text")[0][0]))
    assert lsn is not None
    return lsn


def _fail_reload(timeout: float) -> bool:
    raise PostgresError("simulated: configuration reload not applied")


def test_sync_is_what_the_server_runs_not_what_the_file_says(
        pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reload that failed once leaves the file naming a set the server does not wait for:
    observe() must report the server's live set, and set_sync must still apply the file's."""
    p = pair.p
    a = SyncConfig(1, frozenset({"r1"}))
    b = SyncConfig(1, frozenset({"r1", "ghost"}))
    try:
        p.set_sync(a)
        assert _show_sync(p) == 'ANY 1 ("r1")'
        applied_a = p.observe(2).sync_applied_lsn
        assert applied_a is not None

        with monkeypatch.context() as m:
            m.setattr(p, "_reload_and_wait", _fail_reload)
            with pytest.raises(PostgresError, match="simulated"):
                p.set_sync(b)
        assert _show_sync(p) == 'ANY 1 ("r1")'  # the file says b; the server still runs a
        v = p.observe(2)
        assert v.sync == a, f"reported {v.sync}, the server waits for {_show_sync(p)!r}"
        assert v.sync_applied_lsn == applied_a

        query(p._cfg, "INSERT INTO t VALUES (10, 'advance the WAL')")
        before_b = _current_lsn(p)
        p.set_sync(b)
        assert _show_sync(p) == 'ANY 1 ("ghost", "r1")', "set_sync(b) did not reach the server"
        v = p.observe(2)
        assert v.sync == b and v.sync_applied_lsn is not None and v.sync_applied_lsn >= before_b

        # A reload applied behind our back (the signal got through after all): the next
        # observation sees the change and counts it from no earlier than its own LSN.
        with monkeypatch.context() as m:
            m.setattr(p, "_reload_and_wait", _fail_reload)
            with pytest.raises(PostgresError, match="simulated"):
                p.set_sync(a)
        assert p.observe(2).sync == b
        query(p._cfg, "INSERT INTO t VALUES (11, 'advance the WAL')")
        before_reload = _current_lsn(p)
        query(p._cfg, "SELECT pg_reload_conf()")
        v = wait_for(lambda: (lambda v: v if v.sync == a else None)(p.observe(2)), 10,
                     "the reloaded set observed")
        assert v.sync_applied_lsn is not None and v.sync_applied_lsn >= before_reload
    finally:
        query(p._cfg, "DELETE FROM t WHERE id IN (10, 11)")
        p.set_sync(NO_SYNC)
    assert _show_sync(p) == "" and p.observe(2).sync == NO_SYNC


def test_set_sync_fails_when_the_server_does_not_take_the_setting(pair: Pair) -> None:
    """ALTER SYSTEM (postgresql.auto.conf) overrides our file: set_sync must not claim success,
    and observe() must report what the server really waits for, FIRST included."""
    p = pair.p
    try:
        query(p._cfg, "ALTER SYSTEM SET synchronous_standby_names = 'FIRST 1 (r1, r2)'")
        query(p._cfg, "SELECT pg_reload_conf()")
        want = SyncConfig(1, frozenset({"r1", "r2"}))
        wait_for(lambda: p.observe(2).sync == want, 10, "the ALTER SYSTEM setting observed")
        with pytest.raises(PostgresError, match="synchronous_standby_names"):
            p.set_sync(SyncConfig(1, frozenset({"r1"})))
    finally:
        query(p._cfg, "ALTER SYSTEM RESET synchronous_standby_names")
        query(p._cfg, "SELECT pg_reload_conf()")
        wait_for(lambda: _show_sync(p) in ("", 'ANY 1 ("r1")'), 10, "the override gone")
        p.set_sync(NO_SYNC)
    assert _show_sync(p) == "" and p.observe(2).sync == NO_SYNC
