"""Promotion and starting as primary against real PostgreSQL: a new primary enforces its
synchronous setting from its first write, and a standby's data directory never comes up as a
primary without promotion (a new timeline)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgwarden.config.schema import ClusterSettings, SyncMode
from pgwarden.core.model import SyncConfig
from pgwarden.core.sync import NO_STANDBY
from pgwarden.postgres import sql as pgsql_module
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
STRICT = ClusterSettings(synchronous_mode=SyncMode.ON, synchronous_mode_strict=True)


def _clone(base: Path, name: str, source: PostgresController,
           settings: ClusterSettings | None = None) -> PostgresController:
    ctl = controller(make_node_config(base, name, free_port(), free_port()), settings)
    source.ensure_slots({name})
    ctl.clone(HOST, source._cfg.postgresql.port, timeout=60)
    return ctl


def _up(ctl: PostgresController) -> tuple[str, str, int]:
    return (ctl._cfg.name, HOST, ctl._cfg.postgresql.port)


def _commit_blocks(ctl: PostgresController, table: str, wait_s: float = 1.0) -> tuple[bool, str]:
    """Does a commit wait for a synchronous standby? (blocked?, what happened). A blocked commit
    is cancelled after `wait_s`: PostgreSQL then ends its wait with a WARNING (the transaction
    stays committed locally). statement_timeout cannot do this: it ends before the commit."""
    notices: list[str] = []
    conn = connect(ctl._cfg)
    try:
        conn.add_notice_handler(lambda d: notices.append(str(d.message_primary)))
        done = threading.Event()
        t0 = time.monotonic()

        def commit() -> None:
            conn.execute(f"CREATE TABLE {table} (id int)")
            done.set()

        writer = threading.Thread(target=commit, daemon=True)
        writer.start()
        if done.wait(wait_s):
            return False, f"the commit returned after {time.monotonic() - t0:.3f}s"
        conn.cancel_safe()
        assert done.wait(10), "the cancelled commit did not return"
        writer.join(5)
        assert any("synchronous replication" in n for n in notices), notices
        return True, f"blocked until cancelled; notices {notices}"
    finally:
        conn.close()


class _Rows:
    def __init__(self, row: Any) -> None:
        self._row = row

    def fetchone(self) -> Any:
        return self._row


class _PromoteSpy:
    """A controller connection that runs `before` just before pg_promote and `after` the moment
    it returns (before the controller does anything else)."""

    def __init__(self, conn: psycopg.Connection[Any], spy: _Spy) -> None:
        self._conn = conn
        self._spy = spy

    def __enter__(self) -> _PromoteSpy:
        self._conn.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._conn.__exit__(*exc)

    def execute(self, query: Any, params: Any = None) -> Any:
        if "pg_promote" not in str(query):
            return self._conn.execute(query, params)
        self._spy.before()
        row = self._conn.execute(query, params).fetchone()
        self._spy.after()
        return _Rows(row)


class _Spy:
    def __init__(self, ctl: PostgresController) -> None:
        self.ctl = ctl
        self.seen: dict[str, Any] = {}

    def before(self) -> None:
        self.seen["signal_before"] = (self.ctl.data_dir / "standby.signal").exists()

    def after(self) -> None:
        rows = query(self.ctl._cfg,
                     "SELECT pg_is_in_recovery(), current_setting('synchronous_standby_names')")
        self.seen["in_recovery"], self.seen["sync_names"] = rows[0]
        self.seen["commit"] = _commit_blocks(self.ctl, "written_right_after_pg_promote")


def test_new_primary_enforces_strict_sync_from_its_first_commit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = bootstrapped_primary(make_node_config(tmp_path, "a", free_port(), free_port()))
    b: PostgresController | None = None
    try:
        b = _clone(tmp_path, "b", a, STRICT)
        b.start(role="replica", upstream=_up(a), wait_timeout=30)
        wait_for(lambda: b is not None and b.observe(2).streaming, 20, "b streams from a")
        a.stop("fast", 20)  # the old primary is gone: nobody can acknowledge b's commits

        spy = _Spy(b)
        real_connect = pgsql_module.connect

        def spying_connect(params: pgsql_module.ConnParams, timeout: float) -> Any:
            return _PromoteSpy(real_connect(params, timeout), spy)

        with monkeypatch.context() as m:
            m.setattr(pgsql_module, "connect", spying_connect)
            b.promote(20)

        assert spy.seen["signal_before"] is True, "standby.signal removed before pg_promote"
        assert spy.seen["in_recovery"] is False
        # With no view of the cluster (promote() called without the core's setting): a name no
        # member has, so every commit waits (rule 8) until the HA loop names the members.
        assert spy.seen["sync_names"] == f'ANY 1 ("{NO_STANDBY}")', (
            f"right after pg_promote the new primary ran synchronous_standby_names = "
            f"{spy.seen['sync_names']!r}")
        blocked, what = spy.seen["commit"]
        assert blocked, f"a commit right after pg_promote did not wait for a standby: {what}"

        # And after promote() returns, of course.
        assert not (b.data_dir / "standby.signal").exists()
        assert query(b._cfg, "SHOW synchronous_standby_names") == [(f'ANY 1 ("{NO_STANDBY}")',)]
        v = b.observe(2)
        assert v.in_recovery is False and v.sync == SyncConfig(1, frozenset({NO_STANDBY}))
        assert v.sync_applied_lsn is not None
        blocked, what = _commit_blocks(b, "written_after_promote")
        assert blocked, what
    finally:
        teardown(a)
        if b is not None:
            teardown(b)


def test_promote_without_strict_mode_waits_for_nobody(tmp_path: Path) -> None:
    """The non-strict new primary drops whatever set it carried (it may name the dead primary)."""
    a = bootstrapped_primary(make_node_config(tmp_path, "a", free_port(), free_port()))
    b: PostgresController | None = None
    try:
        b = _clone(tmp_path, "b", a)
        b.set_sync(SyncConfig(1, frozenset({"a"})))  # stopped: written for the next start
        b.start(role="replica", upstream=_up(a), wait_timeout=30)
        assert query(b._cfg, "SHOW synchronous_standby_names") == [('ANY 1 ("a")',)]
        a.stop("fast", 20)
        b.promote(20)
        assert query(b._cfg, "SHOW synchronous_standby_names") == [("",)]
        blocked, what = _commit_blocks(b, "not_blocked")
        assert not blocked, what
        # The recovery settings the promoted config dropped need no restart on a primary.
        assert b.observe(5).pending_restart is False
    finally:
        teardown(a)
        if b is not None:
            teardown(b)


def test_a_member_promoted_again_starts_with_no_standby_slots_of_an_earlier_term(tmp_path: Path) -> None:
    """17+: synchronized_standby_slots left by ALTER SYSTEM from an earlier term as primary names
    slots this server lacks; a failover slot's walsender would wait for them. Promotion clears it
    (the leader sets the streaming candidates' slots from its next loop)."""
    a = bootstrapped_primary(make_node_config(tmp_path, "a", free_port(), free_port()))
    b: PostgresController | None = None
    try:
        if int(query(a._cfg, "SHOW server_version_num")[0][0]) < 170000:
            pytest.skip("synchronized_standby_slots exists from PostgreSQL 17")
        b = _clone(tmp_path, "b", a)
        b.start(role="replica", upstream=_up(a), wait_timeout=30)
        b.set_standby_slots(frozenset({"gone"}), 10)  # as its earlier term left it
        assert query(b._cfg, "SHOW synchronized_standby_slots") == [("gone",)]
        a.stop("fast", 20)
        b.promote(20)
        assert query(b._cfg, "SHOW synchronized_standby_slots") == [("",)]
    finally:
        teardown(a)
        if b is not None:
            teardown(b)


def test_promote_enforces_the_setting_the_core_chose_from_the_first_commit(tmp_path: Path) -> None:
    """The store promises every commit is on "c" (not running): the new primary must wait for it,
    not acknowledge commits no member of the promise holds (fault suite, seed 765280336)."""
    a = bootstrapped_primary(make_node_config(tmp_path, "a", free_port(), free_port()))
    b: PostgresController | None = None
    try:
        b = _clone(tmp_path, "b", a)
        b.start(role="replica", upstream=_up(a), wait_timeout=30)
        a.stop("fast", 20)
        b.promote(20, SyncConfig(1, frozenset({"c"})))
        assert query(b._cfg, "SHOW synchronous_standby_names") == [('ANY 1 ("c")',)]
        blocked, what = _commit_blocks(b, "waits_for_c")
        assert blocked, what
    finally:
        teardown(a)
        if b is not None:
            teardown(b)


def test_a_standby_data_directory_is_never_started_as_primary(tmp_path: Path) -> None:
    a = bootstrapped_primary(make_node_config(tmp_path, "a", free_port(), free_port()))
    b: PostgresController | None = None
    try:
        b = _clone(tmp_path, "b", a)
        # A base backup that never ran: its pg_control is the primary's ("in production"), but
        # it has a backup_label and must replay from it as a standby.
        assert b.observe(2).was_primary is False
        with pytest.raises(PostgresError, match="standby"):
            b.start(role="primary", upstream=None, wait_timeout=30)
        assert b.postmaster_pid() is None
        assert (b.data_dir / "standby.signal").exists()

        b.start(role="replica", upstream=_up(a), wait_timeout=30)
        wait_for(lambda: b is not None and b.observe(2).streaming, 20, "b streams from a")
        b.stop("fast", 20)
        v = b.observe(2)
        assert not v.running and v.was_primary is False

        with pytest.raises(PostgresError, match="standby") as err:
            b.start(role="primary", upstream=None, wait_timeout=30)
        assert "promote" in str(err.value)
        assert b.postmaster_pid() is None, "a standby's data directory came up as a primary"
        assert (b.data_dir / "standby.signal").exists()
        assert b.observe(2).was_primary is False

        # The way it becomes a primary: start as a standby, then promote (timeline 2).
        a.stop("fast", 20)
        b.start(role="replica", upstream=None, wait_timeout=30)
        b.promote(20)
        assert b.observe(2).timeline == 2
        b.stop("fast", 20)
        assert b.observe(2).was_primary is True
        b.start(role="primary", upstream=None, wait_timeout=30)  # a former primary restarts
        v = wait_for(lambda: (lambda v: v if v.healthy else None)(b.observe(2)) if b else None,
                     20, "b healthy")
        assert v.in_recovery is False and v.timeline == 2
    finally:
        teardown(a)
        if b is not None:
            teardown(b)
