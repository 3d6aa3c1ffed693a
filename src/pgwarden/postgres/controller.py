"""PostgresController: everything the agent does to its local PostgreSQL (observe, bootstrap,
clone, start/stop, promote/demote, sync, slots, rewind), as the unprivileged OS user.

Files beside the data directory (so a wipe or a clone never touches them, and pg_basebackup
still finds an empty directory): `<data_dir>.log` (the server log, pg_ctl -l),
`<data_dir>.pgpass` (libpq passfile with the replication and superuser passwords, mode 0600) and
`<data_dir>.run/` (the unix socket: pg_rewind chokes on a socket inside the data directory).
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import psycopg

from pgwarden.config.schema import ClusterSettings
from pgwarden.core import sync as core_sync
from pgwarden.core.logical import LogicalChange, LogicalObjects
from pgwarden.core.model import DataState, PgView, SyncConfig, int_to_lsn
from pgwarden.core.parameters import SettingSpec
from pgwarden.postgres import conf, controldata, logical, slot_copies, sql
from pgwarden.postgres.health_conn import QueryTimedOut
from pgwarden.postgres.provision import DataDirectory, _end_lsn
from pgwarden.postgres.server import (
    PostgresError,
    Role,
    StopMode,
    UpstreamTuple,
    _tail,
)

__all__ = ["PostgresController", "PostgresError", "Role", "StopMode", "UpstreamTuple"]

log = logging.getLogger("pgwarden.postgres")


class PostgresController(DataDirectory):
    """The only object the agent uses to act on PostgreSQL. Methods raise PostgresError on
    failure, except observe() (never raises) and rewind() (returns False)."""

    # ---- observation ---------------------------------------------------------------------

    def _probe(self, budget: float, pid: int) -> sql.Health | None:
        """Health query bounded by `budget`. While a session is kept (postgres/health_conn.py)
        and no earlier probe is still out, on this thread: every wait is on a socket with a
        deadline. Otherwise (a fresh connection: libpq's connect timeout cannot go below 2 s;
        a replica's timeline read on a replication connection) on the kept probe thread
        (postgres/probe_worker.py), waited for up to what is left of `budget`. At most one probe
        is in flight either way, so the kept connection has one user at a time."""
        deadline = time.monotonic() + budget
        if not self._prober.busy():
            params = self.local_params()
            if self._health.kept_for(params, pid):
                try:
                    health = self._health.query_kept(params, pid, budget)
                except QueryTimedOut:
                    log.warning("PostgreSQL did not answer the health query within %.2fs", budget)
                    return None
                except psycopg.Error as e:  # the postmaster did not answer
                    log.info("health query failed: %s", e)
                    return None
                if health is not None and not sql.needs_replay_timeline(health):
                    return health
                if health is not None:  # its timeline comes from a replication connection
                    left = deadline - time.monotonic()
                    return self._on_prober(
                        lambda: self._replay_timeline(health, params, max(left, 0.5)), left)
        left = deadline - time.monotonic()
        return self._on_prober(lambda: self._loop_health(pid, max(left, 0.5)), left)

    def _on_prober(self, fn: Callable[[], sql.Health], budget: float) -> sql.Health | None:
        job = self._prober.submit(fn)
        if job is None:
            log.warning("previous health query still has no answer")
            return None
        if not job.wait(budget):
            log.warning("PostgreSQL did not answer the health query within %.2fs", budget)
            return None
        if job.error is not None:
            log.info("health query failed: %s", job.error)
            return None
        return job.value

    def observe(self, timeout: float) -> PgView:
        """What the local PostgreSQL is doing, within `timeout` seconds. Never raises."""
        started = time.monotonic()
        try:
            return self._observe(timeout, started)
        except Exception:  # the agent must always get a view
            log.exception("observe failed")
            try:
                data = self.data_state()
            except Exception:
                data = DataState.BROKEN
            return PgView(data=data, version=self.major)

    def _observe(self, timeout: float, started: float) -> PgView:
        data = self.data_state()
        st = self._state
        upstream = st.upstream.member if st.role == "replica" and st.upstream else None
        base = PgView(data=data, upstream=upstream, sync=st.sync, version=self.major)
        pid = self.postmaster_pid() if data is DataState.VALID else None
        if pid is None:
            if data is not DataState.VALID:
                return base
            left = timeout - (time.monotonic() - started)
            try:
                cd = controldata.read_controldata(self.bin_dir, self.data_dir, self.os_user,
                                                  max(left, 0.5))
            except (controldata.ControlDataError, OSError, subprocess.SubprocessError) as e:
                log.warning("cannot read pg_control: %s", e)
                return base
            was_primary = cd.was_primary and not controldata.unstarted_backup(self.data_dir)
            return replace(base, system_id=cd.system_id, timeline=cd.timeline,
                           checkpoint_lsn=_end_lsn(cd), was_primary=was_primary,
                           clean_shutdown=cd.clean_shutdown)
        health = self._probe(timeout - (time.monotonic() - started), pid)
        if health is None:
            known = self._live.known(pid)
            return replace(base, running=True, healthy=False, postmaster_pid=pid,
                           sync=st.sync if known is None else known)
        # What the server waits for, not what we last wrote: a reload may not have gone through.
        live = self._live.note(pid, health.sync_standby_names, health.in_recovery,
                               health.current_lsn)
        return replace(
            base, sync=live, running=True, healthy=True, postmaster_pid=pid,
            in_recovery=health.in_recovery, system_id=health.system_id, timeline=health.timeline,
            lsn=health.lsn, received_lsn=health.received_lsn, replayed_lsn=health.replayed_lsn,
            streaming=health.receiver_status == "streaming",
            replication=health.replication if not health.in_recovery else (),
            pending_restart=health.pending_restart, version=health.version_num // 10000,
            sync_applied_lsn=self._live.applied_lsn,
        )

    # ---- lifecycle -----------------------------------------------------------------------


    def promote(self, timeout: float, sync_after: SyncConfig | None = None) -> None:
        """Promote the running standby and wait until it accepts writes.

        `sync_after` (the core's `sync.after_promotion`: what the store's promise needs; None:
        the settings' default with no promise, for tools) is reloaded while the server is
        still a standby (the server accepts it in recovery and enforces it the moment recovery
        ends), so it holds from the first commit. standby.signal stays until pg_promote removes
        it: a crash before the promotion must bring the server back as a standby.
        """
        deadline = time.monotonic() + timeout
        if sync_after is None:
            sync_after = core_sync.after_promotion(self._settings_provider(), None, self._cfg.name, ())
        try:
            with self._local(timeout) as conn:
                standby = sql.query_live_sync(conn).in_recovery
        except psycopg.Error as e:
            raise PostgresError(f"cannot set the synchronous setting before promoting: {e}") from e
        if standby:
            # 17+: synchronized_standby_slots (ALTER SYSTEM) may still name the slots of an earlier
            # term as primary, slots this server does not have: its failover slots' walsenders
            # would wait for them until the leader's next loop. Nobody streams from us yet, which
            # is what leader_slot_actions would say too: start with none.
            try:
                self.set_standby_slots(frozenset(), max(1.0, deadline - time.monotonic()))
            except psycopg.Error as e:
                log.warning("cannot clear synchronized_standby_slots before promoting: %s", e)
            self._write_config(conf.ConfState("replica", self._state.upstream, sync_after, ""))
            self._reload_and_wait(max(1.0, deadline - time.monotonic()))
        left = max(1.0, deadline - time.monotonic())
        wait_s = max(1, int(left))
        ok = False
        try:
            with self._local(left + 1) as conn:
                log.info("SELECT pg_promote(wait => true, wait_seconds => %d)", wait_s)
                row = conn.execute("SELECT pg_promote(wait => true, wait_seconds => %s)",
                                   (wait_s,)).fetchone()
                ok = bool(row and row[0])
        except psycopg.Error as e:
            log.warning("pg_promote failed: %s; falling back to pg_ctl promote", e)
        if not ok:
            left = max(1.0, deadline - time.monotonic())
            res = self._run([self._bin("pg_ctl"), "promote", "-D", str(self.data_dir), "-w",
                             "-t", str(max(1, int(left)))], left + 2)
            if res.returncode != 0:
                raise PostgresError(f"pg_ctl promote failed: {(res.stdout + res.stderr).strip()}")
        while True:
            try:
                with self._local(max(0.5, deadline - time.monotonic())) as conn:
                    row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
                    if row is not None and not row[0]:
                        break
            except psycopg.Error as e:
                log.debug("waiting for promotion: %s", e)
            if time.monotonic() > deadline:
                raise PostgresError(f"still in recovery {timeout:g}s after promote")
            time.sleep(0.05)
        self._write_config(conf.ConfState("primary", None, sync_after, ""))
        self._reload_and_wait(max(1.0, deadline - time.monotonic()))

    def demote(self, upstream: UpstreamTuple | None, timeout: float) -> None:
        """Fast stop (writes end for every session), then start as a standby of `upstream`."""
        deadline = time.monotonic() + timeout
        self.stop("fast", timeout / 2)
        self.start(role="replica", upstream=upstream,
                   wait_timeout=max(1.0, deadline - time.monotonic()))

    def reconfigure(self, upstream: UpstreamTuple | None, sync: SyncConfig,
                    settings: ClusterSettings, timeout: float = 5.0) -> bool:
        """Rewrite the config (upstream, sync, parameters) and reload when running; return
        whether some changed parameter needs a restart (primary_conninfo does not, PG >= 13)."""
        role: Role = "replica" if self._state.role == "replica" else "primary"
        up = conf.Upstream(*upstream) if role == "replica" and upstream else None
        state = conf.ConfState(role, up, sync, self._state.generation)
        running = self.postmaster_pid() is not None
        if self._config_unchanged(state, settings) and (not running or self._runs_our_file(timeout)):
            return running and self._pending_restart
        self._write_config(state, settings)
        if not running:
            return False
        self._pending_restart = self._reload_and_wait(timeout)
        return self._pending_restart

    def _runs_our_file(self, timeout: float) -> bool:
        """Does the server run the config file we last wrote (a reload may have failed)?"""
        try:
            with self._local(timeout) as conn:
                return sql.current_generation(conn) == self._state.generation
        except psycopg.Error as e:
            log.debug("cannot read the running configuration's generation: %s", e)
            return False

    def set_sync(self, sync: SyncConfig, timeout: float = 5.0) -> None:
        """Make synchronous_standby_names enforce `sync`; returns once the server runs it, and
        records the primary's LSN at that moment (PgView.sync_applied_lsn). Skips the reload
        only when the server, asked now, already runs `sync` and the file says so too: after a
        reload that did not go through, the file is ahead of the server."""
        deadline = time.monotonic() + timeout
        state = replace(self._state, sync=sync)
        pid = self.postmaster_pid()
        if pid is None:
            self._write_config(state)
            return
        try:
            with self._local(timeout) as conn:
                live = self._note_live(pid, conn)
        except psycopg.Error as e:
            raise PostgresError(f"cannot read synchronous_standby_names: {e}") from e
        if live == sync and self._config_unchanged(state, None):
            return  # already enforced since PgView.sync_applied_lsn
        self._write_config(state)
        self._reload_and_wait(max(0.5, deadline - time.monotonic()))
        if self._live.sync != sync:
            raise PostgresError(
                f"synchronous_standby_names is {self._live.names!r} after the reload, not "
                f"{conf.sync_standby_names(sync)!r} (overridden in postgresql.auto.conf?)")

    def ensure_slots(self, names: set[str], timeout: float = 5.0) -> None:
        """On the primary: a physical slot for each member in `names` (member or slot names;
        slot_name() is idempotent); inactive physical slots not wanted are dropped."""
        wanted = {conf.slot_name(n) for n in names}
        with self._local(timeout) as conn:
            rows = conn.execute(
                "SELECT slot_name, active FROM pg_replication_slots "
                "WHERE slot_type = 'physical' AND NOT temporary"
            ).fetchall()
            have = {str(r[0]): bool(r[1]) for r in rows}
            for name in sorted(wanted - set(have)):
                log.info("creating replication slot %s", name)
                conn.execute("SELECT pg_create_physical_replication_slot(%s, true)", (name,))
            for name, active in sorted(have.items()):
                if name in wanted or active:
                    continue
                log.info("dropping replication slot %s", name)
                try:
                    conn.execute("SELECT pg_drop_replication_slot(%s)", (name,))
                except psycopg.Error as e:  # it may have become active meanwhile
                    log.warning("cannot drop slot %s: %s", name, e)


    def logical_objects(self, timeout: float) -> LogicalObjects:
        """The publications and subscriptions this server holds, with their marks."""
        with self._local(timeout) as conn:
            return logical.read_objects(conn)

    def apply_logical(self, change: LogicalChange, timeout: float) -> None:
        """Carry out one change of the declared logical replication (off the HA loop)."""
        try:
            with self._local(timeout) as conn:
                logical.apply_change(conn, change, timeout)
        except (psycopg.Error, ValueError) as e:
            raise PostgresError(str(e).strip().splitlines()[0] if str(e).strip() else repr(e)) from e

    def copy_logical_slots(self, names: frozenset[str], host: str, port: int, timeout: float) -> list[str]:
        """Write the primary's state files of `names` into our pg_replslot, each only if our
        replay position is already past the slot's (core/slot_copies.py). Returns those written."""
        pg = self._cfg.postgresql
        params = sql.ConnParams(host=host, port=port, user=pg.superuser.username,
                                password=pg.superuser.secret())
        done: list[str] = []
        with sql.connect(params, timeout) as primary, self._local(timeout) as local:
            for name in sorted(names):
                got = slot_copies.fetch_state(primary, name)
                if got is None:
                    continue
                state, position = got
                replayed = slot_copies.replay_lsn(local)
                if replayed < position:
                    log.info("logical slot %s: not copied yet, our replay is behind it", name)
                    continue
                start = slot_copies.state_restart_lsn(state)
                if start is not None and not slot_copies.has_wal_at(local, start):
                    # Loaded, it could not decode (and would be dropped after a restart for
                    # nothing, again each loop): wait until the primary's slot moves on.
                    log.info("logical slot %s: not copied yet, it starts decoding at %s, in WAL this "
                             "standby no longer has", name, int_to_lsn(start))
                    continue
                slot_copies.write_state(self.data_dir, name, state, self.uid, self.gid)
                log.info("copied logical slot %s from %s:%d", name, host, port)
                done.append(name)
        return done

    def advance_logical_slots(self, targets: tuple[tuple[str, int], ...], timeout: float) -> None:
        with self._local(timeout) as conn:
            self._copy_snapshots(conn, timeout)
            for name, lsn in targets:
                try:
                    slot_copies.advance(conn, name, int_to_lsn(lsn) or "0/0")
                except psycopg.errors.UndefinedFile as e:  # also SQLSTATE 58P01: WAL gone
                    # The copy needs WAL this standby no longer has: it could not decode after a
                    # promotion either. Drop it; the next loop copies the primary's again.
                    log.warning("logical slot copy %s is unusable (%s): dropping it", name,
                                str(e).strip().splitlines()[0])
                    slot_copies.drop(conn, name)

    def _copy_snapshots(self, local: psycopg.Connection[Any], timeout: float) -> None:
        """The upstream's serialized decoding snapshot at each copy's restart_lsn, if we lack it.

        A copy starts decoding there. Without the snapshot, its decoder has to build one, and
        it is consistent only once every transaction running there has ended. Transactions
        committed before that are skipped. After a promotion that point can lie past the new
        timeline's start, and then the new primary's first commits never reach the subscriber
        (rule 19; tests/postgres/test_slot_copy_snapshot.py).

        Only positions we have replayed are taken: our WAL holds the same record there. The
        files are written with the slots loaded, because a standby's restartpoint with no
        logical slot removes every one of them. Once a copy has decoded from its snapshot, the
        standby serializes its own."""
        up = self._state.upstream
        snaps = self.data_dir / "pg_logical" / "snapshots"
        if up is None or up.dsn or not snaps.is_dir():
            return
        replayed = slot_copies.replay_lsn(local)
        need = {name for lsn in slot_copies.restart_points(local)
                if lsn <= replayed and not (snaps / (name := slot_copies.snapshot_file(lsn))).exists()}
        if not need:
            return
        pg = self._cfg.postgresql
        params = sql.ConnParams(host=up.host, port=up.port, user=pg.superuser.username,
                                password=pg.superuser.secret())
        with sql.connect(params, timeout) as primary:
            files = {n: data for n in sorted(need) if (data := slot_copies.fetch_snapshot(primary, n))}
        slot_copies.write_snapshots(self.data_dir, files, self.uid, self.gid)
        for name in files:
            log.info("copied the decoding snapshot %s from %s for a logical slot copy", name, up.member)

    def set_standby_slots(self, members: frozenset[str], timeout: float) -> None:
        """synchronized_standby_slots = these members' physical slots (17+), by ALTER SYSTEM
        (postgresql.auto.conf) and a reload, only when the server runs another value."""
        value = ",".join(sorted(conf.slot_name(m) for m in members))
        with self._local(timeout) as conn:
            row = conn.execute("SELECT current_setting('synchronized_standby_slots', true)").fetchone()
            if row is not None and (row[0] or "") == value:
                return
            log.info("synchronized_standby_slots -> %r", value)
            conn.execute(f"ALTER SYSTEM SET synchronized_standby_slots = {conf.quote_value(value)}")
            conn.execute("SELECT pg_reload_conf()")

    def drop_logical_slots(self, names: frozenset[str], timeout: float) -> None:
        with self._local(timeout) as conn:
            for name in sorted(names):
                log.info("dropping logical slot copy %s", name)
                slot_copies.drop(conn, name)

    def log_tail(self, lines: int = 20) -> str:
        return _tail(self.log_file, lines)

    def setting_specs(self, timeout: float) -> list[SettingSpec]:
        """pg_settings of our server, to check parameter values before they are stored."""
        with sql.connect(self.local_params(), timeout) as conn:
            return sql.setting_specs(conn)

    def fresh_health(self, timeout: float) -> sql.Health:
        """The health query now, on a connection of its own: a peer deciding a promotion needs
        our position as it is, not as our last loop saw it (rule 7)."""
        params = self.local_params()
        with sql.connect(params, timeout) as conn:
            health = sql.query_health(conn)
        return self._replay_timeline(health, params, timeout)

    def _loop_health(self, pid: int, timeout: float) -> sql.Health:
        """The loop's health query, on the kept connection (postgres/health_conn.py)."""
        params = self.local_params()
        return self._replay_timeline(self._health.query(params, pid, timeout), params, timeout)

    def _replay_timeline(self, health: sql.Health, params: sql.ConnParams, timeout: float) -> sql.Health:
        if sql.needs_replay_timeline(health):
            # With no WAL receiver the query reports pg_control's timeline, which lags until a
            # restartpoint: a peer would take us for a node on an old timeline (no candidate).
            tl = sql.replay_timeline(params, timeout)
            if tl is not None:
                health = replace(health, timeline=tl)
        return health


