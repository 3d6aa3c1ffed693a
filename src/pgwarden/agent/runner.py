"""The agent: once per loop, observe (PostgreSQL, the store, peers when needed), call the pure
core, execute its actions, publish what happened. The REST API runs on its own thread and reads
only the published NodeState."""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import replace

from pgwarden.agent.crash_check import CrashCheck
from pgwarden.agent.executor import BOOKKEEPING, STOP_TIMEOUT, Executor, LocalFacts
from pgwarden.agent.failsafe import FailsafeClient, FailsafeLedger
from pgwarden.agent.failsafe_member import FailsafeMember
from pgwarden.agent.lease import LeaseKeeper
from pgwarden.agent.logical import LOGICAL_RECHECK, BoundedReader, logical_read_due
from pgwarden.agent.member_card import MemberCard
from pgwarden.agent.peers import PeerProbe
from pgwarden.agent.position import (
    SharedReading,
    fresh_position,
    looks_behind_the_leader,
    with_fresh_position,
)
from pgwarden.agent.single import run_dir_for
from pgwarden.agent.sites import SiteProbe
from pgwarden.agent.slot_ledger import SlotLedger
from pgwarden.api.auth import BasicAuth, basic_header
from pgwarden.api.server import ApiServer
from pgwarden.api.state import CommandRefused, NodeState, StateHolder
from pgwarden.api.telemetry import Facts, Telemetry
from pgwarden.config.schema import ClusterSettings, NodeConfig
from pgwarden.core.actions import Clone, Reclone, Rewind, StartPostgres
from pgwarden.core.decide import decide
from pgwarden.core.logical import MARK
from pgwarden.core.model import (
    ClusterView,
    LeaderCheck,
    LocalCommand,
    Me,
    MemberInfo,
    Observation,
    PeerReading,
    PgView,
    Role,
    SiteReading,
    Tags,
)
from pgwarden.core.shutdown import after_stop
from pgwarden.core.slot_copies import copy_state
from pgwarden.core.standby import source_upstream
from pgwarden.core.waits import CopyClock, StreamClock, UnhealthyClock, WaitClocks
from pgwarden.fence.supervisor import Fencer
from pgwarden.gate.supervisor import GateProcess
from pgwarden.postgres.controller import PostgresController, UpstreamTuple
from pgwarden.routing.router import router_for
from pgwarden.store.base import StoreError
from pgwarden.store.cluster import ClusterStore
from pgwarden.store.factory import open_store
from pgwarden.store.timed import TimedKV
from pgwarden.tls.contexts import ContextSource, client_context, server_context

log = logging.getLogger("pgwarden.agent")

MIN_LOOP_INTERVAL = 0.05


class Agent(FailsafeMember):
    def __init__(self, cfg: NodeConfig, api_auth: tuple[str, str] | None = None) -> None:
        self.cfg = cfg
        self.seed = cfg.initial_settings()
        self._settings: ClusterSettings = self.seed
        self._settings_token: str | None = None
        self.stop_event = threading.Event()
        self.holder = StateHolder()
        self.lease = LeaseKeeper()
        self.facts = LocalFacts()
        # HTTPS (restapi.tls): the API's context and the client one for peers, both following
        # the files (rotation; SIGHUP checks at once).
        tls = cfg.restapi.tls
        self.api_tls = None if tls is None else ContextSource(tls.server_paths(), server_context)
        self.client_tls = None if tls is None else ContextSource(tls.client_paths(), client_context)
        self.peers = PeerProbe(self.client_tls, basic_header(*api_auth) if api_auth is not None else None)
        # The other sites (rule 18), probed in the background; news wakes the loop.
        self.sites = SiteProbe(on_change=self.store_wakeup, tls=self.client_tls)
        self.started_at = time.time()
        self.telemetry = Telemetry(cfg.name)  # /metrics, /decisions (api/telemetry.py)
        self.store: ClusterStore = open_store(cfg.store, cfg.cluster)
        self.store.kv = TimedKV(self.store.kv, self.telemetry.store_call)
        self.pg = PostgresController(cfg, self.settings)
        self.crash = CrashCheck(cfg.name, self.pg)  # rule 16's evidence (agent/crash_check.py)
        self.fencer = Fencer(run_dir_for(cfg), cfg.data_dir)
        # Keeps a configured PgBouncer pointed at the primary (pgwarden.routing.router).
        self.router = router_for(cfg.pgbouncer, cfg.cluster)
        self.exec = Executor(cfg, self.pg, self.store, self.lease, self.fencer, self.facts,
                             self.settings, self.seed, self.router)
        self.exec.slot_ledger = SlotLedger(run_dir_for(cfg) / "slot_copies.json")
        self._ledger_sysid, self.facts.slot_copies = self.exec.slot_ledger.load()
        host, port = cfg.postgresql.connect_host_port()
        self.me = Me(cfg.name, Tags.from_dict(cfg.tags.as_dict()), host, port, cfg.restapi.url())
        # The API writes requests through a store client of its own: the agent's client ignores
        # changes it made itself, and a switchover request must wake the agent's loop.
        self.api_store: ClusterStore = open_store(cfg.store, cfg.cluster)
        self.api = ApiServer(cfg.restapi.listen_address, cfg.restapi.port, self.holder, self.api_store,
                             self, cfg.name,
                             auth=BasicAuth(*api_auth) if api_auth is not None else None,
                             tls=self.api_tls, max_connections=cfg.restapi.max_connections,
                             setting_specs=self.pg.setting_specs, telemetry=self.telemetry)
        # GET /position: one PostgreSQL reading at a time, shared by concurrent callers.
        self._position = SharedReading(lambda t: fresh_position(self.pg, cfg.name, t), cfg.name)
        self._view: ClusterView | None = None
        self._view_at: float | None = None  # when _view was read (monotonic)
        self._streaming = StreamClock()  # see core/waits.py
        self._unhealthy = UnhealthyClock()
        self._waits = WaitClocks()  # monotonic; see Observation.leaderless_for
        self._last_pg: PgView | None = None
        self.card = MemberCard(self.me, cfg.postgresql.logical_gate_port)
        self._copies = CopyClock()  # Observation.copies_pending_for
        self._leaving_sync = False  # MemberInfo.leaving_sync
        self.gate: GateProcess | None = None  # the logical gate's process, set by agent.main
        self._logical_reader = BoundedReader(self.pg.logical_objects)
        self._logical_seen = True  # managed logical objects may exist: read them until none do
        self._logical_read_at = -LOGICAL_RECHECK  # when they were last read (monotonic)
        self._message = "starting"
        self._seen_store = False  # no loop has read the store yet (Observation.first_look)
        self._lock = threading.Lock()
        self._command: LocalCommand | None = None  # set by the API thread, taken by the loop
        self._wake = threading.Event()
        # Rule 17: the promises we gave (written by the API thread) and the client asking others.
        self.failsafe = FailsafeLedger()
        self.failsafe_client = FailsafeClient(basic_header(*api_auth) if api_auth is not None else None,
                                              self.client_tls)
        self._store_trouble = False  # a store call failed last loop

    def settings(self) -> ClusterSettings:
        return self._settings

    def reload_tls(self) -> None:
        """SIGHUP: load the API's rotated certificates now (they are also noticed by their files'
        change; PostgreSQL's are checked every loop)."""
        log.info("SIGHUP: checking TLS files")
        for source in (self.api_tls, self.client_tls):
            if source is not None:
                source.reload()

    # -- Commands for the REST API (called from the API thread: only queue work) ---------------
    def request_restart(self) -> str:
        with self._lock:
            self._command = LocalCommand.RESTART
        self.store_wakeup()
        return "restart scheduled"

    def request_reinitialize(self, force: bool) -> str:
        # Quick feedback for the operator; the core decides again on the loop's own snapshot.
        view = self._view
        if view is not None and view.leader is not None and view.leader.name == self.cfg.name:
            raise CommandRefused("this node is the leader; switch over first, then reinitialize it")
        if view is None or view.leader is None:
            raise CommandRefused("no leader to clone from")
        with self._lock:
            self._command = LocalCommand.REINITIALIZE
        self.store_wakeup()
        return "reinitialize scheduled"

    def read_position(self, timeout: float) -> PeerReading:
        return self._position.read(timeout)

    def check_leader(self, leader: str, timeout: float) -> LeaderCheck:
        return self.crash.answer(self._view, leader, timeout)

    def store_wakeup(self) -> None:
        self._wake.set()
        self.store.interrupt()  # end the loop's wait now (a no-op where it polls instead)

    # -- lifecycle -----------------------------------------------------------------------------
    def run(self) -> int:
        self.fencer.start()
        self.api.start()
        if self.router is not None:
            self.router.start()
        log.info("agent %s of cluster %s started (pid %d); REST API on %s", self.cfg.name,
                 self.cfg.cluster, os.getpid(), self.api.url)
        try:
            while not self.stop_event.is_set():
                started = time.monotonic()
                try:
                    self.loop_once()
                except Exception:
                    log.exception("HA loop failed; retrying next loop")
                if self.cfg.postgresql.tls is not None:  # rotated certificates: copy and reload
                    self.pg.refresh_tls(self._settings.retry_timeout)
                self._wait(started)
        finally:
            self.shutdown()
        return 0

    def _wait(self, started: float) -> None:
        s = self._settings
        remaining = max(MIN_LOOP_INTERVAL, s.loop_wait - (time.monotonic() - started))
        deadline = time.monotonic() + remaining
        # Wake early on a store change (leader released/expired, switchover asked) or a command:
        # one wait a loop where the store can be interrupted (store_wakeup, stop), else polled.
        poll = remaining if self.store.interruptible else 0.5
        while not self.stop_event.is_set() and not self._wake.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                if self.store.wait_for_change(min(left, poll)):
                    break
            except StoreError:
                self.stop_event.wait(min(left, 0.2))
        self._wake.clear()
        elapsed = time.monotonic() - started
        if elapsed < MIN_LOOP_INTERVAL:
            self.stop_event.wait(MIN_LOOP_INTERVAL - elapsed)

    def stop(self) -> None:
        self.stop_event.set()
        self.store_wakeup()

    def shutdown(self) -> None:
        """Stop PostgreSQL, then give up the lease so a replica takes over at once."""
        log.info("shutting down")
        stopped = False
        try:
            self.pg.stop("fast", STOP_TIMEOUT)
            stopped = self.pg.postmaster_pid() is None
        except Exception:
            log.exception("stopping PostgreSQL failed")
        decision = after_stop(self.lease.held, stopped)
        (log.error if self.lease.held and not stopped else log.info)("%s", decision.message)
        if not self.exec.run(decision.actions, self._view, self._last_pg or self.pg.observe(1.0)):
            self.lease.lost()  # the release failed: the key lapses after ttl; we lead no longer
        if stopped:
            self.fencer.disarm()
        try:
            self.store.delete_member(self.cfg.name, self._settings.retry_timeout)
        except StoreError:
            pass
        self.api.stop()
        if self.router is not None:
            self.router.stop()
        self.peers.close()
        self.sites.close()
        self.failsafe_client.close()
        self.api_store.close()
        self.store.close()

    # -- one loop ------------------------------------------------------------------------------
    def loop_once(self) -> None:
        s = self._settings
        loop_started = time.monotonic()
        try:
            self.fencer.ensure_running()  # rule 13 holds only while a fencer watches
        except OSError as e:
            log.error("cannot start the fencer: %s", e)
        if self.gate is not None:
            self.gate.ensure_running()
        now = time.monotonic()
        pgv = self._observe_pg(s)
        # A store that hung last loop may have used up most of the lease: ask for confirmations
        # while the store read runs, not after it failed too (rule 17).
        early = self._confirmation_round(pgv, s) if self._store_trouble else None
        view = self._snapshot(now)
        if view is not None:
            self._adopt_settings(view)
            s = self._settings
        self.fencer.set_timing(s.ttl, s.retry_timeout)  # before anything arms under them
        with self._lock:
            command, self._command = self._command, None
        peers: dict[str, PeerReading] = {}
        crash = None if view is None or not self.store.take_over_agreed else \
            self.crash.gather(view, pgv, self.peers.check_leader, min(1.0, s.retry_timeout))
        if view is not None and (view.leader is None or view.failover is not None or crash is not None):
            gone = crash.leader if crash is not None else None
            others = [m for n, m in view.members.items() if n not in (self.cfg.name, gone)]
            peers = self.peers.read(others, min(1.0, s.retry_timeout))
        fs_round, fs_votes = self._failsafe_asks(view, pgv, s, early, taking_over=crash is not None)
        mono = time.monotonic()
        if view is not None:
            self._waits.saw(view, mono)
        obs = Observation(
            now=mono, wall=time.time(), me=self.me, pg=pgv, store=view,
            lease=self.lease.view(mono), peers=peers, settings=s,
            leaderless_for=self._waits.leaderless_for(mono),
            request_pending_for=self._waits.request_pending_for(mono),
            command=command, restart_pending=self.facts.restart_pending,
            slots_wanted_at=dict(self.facts.slot_seen),
            first_look=view is not None and not self._seen_store, sites=self._site_readings(view, s),
            failsafe_bound_until=self.failsafe.bound_until, failsafe_round=fs_round,
            failsafe_sets=self._failsafe_sets(), failsafe_votes=fs_votes, snapshot_at=now, crash=crash,
            copies_pending_for=self._copies.pending_for(mono),
        )
        self._seen_store = self._seen_store or view is not None
        trouble = view is None
        decision = decide(obs)
        pending, self._leaving_sync = copy_state(obs)  # the flag: published in our key from now on
        self._copies.saw(bool(pending), mono)
        if decision.message != self._message:
            log.info("%s", decision.message)
            self._message = decision.message
        if decision.actions:
            log.debug("actions: %s", decision.actions)
            if not all(isinstance(a, BOOKKEEPING) for a in decision.actions):
                for a in decision.actions:
                    if isinstance(a, (Clone, Reclone)):  # a long step: /status and the store say so
                        self.facts.activity = f"cloning from {a.source.name}"
                self._publish(pgv, view, store_ok=view is not None)  # show what we are about to do
                if view is not None:
                    # Before a rewind, clone or start that may take a while: the leader keeps a
                    # slot only for members whose key it sees, and we need ours to stream.
                    self._publish_member(pgv, view)
            self.exec.run(decision.actions, view, pgv)
            trouble = trouble or self.exec.store_failed
            if any(isinstance(a, (Rewind, StartPostgres, Reclone, Clone)) for a in decision.actions):
                # A fresh start gets a fresh stuck_after before pg_rewind is tried again, rather
                # than a stop, rewind and start on every loop while the cause persists.
                self._streaming.restart()
            if not all(isinstance(a, BOOKKEEPING) for a in decision.actions):
                pgv = self._observe_pg(s)
        self._release_votes(self.exec.acquire_outcome if decision.actions else "not tried",
                            min(1.0, s.retry_timeout))
        if self.router is not None:
            leading = self.lease.held and pgv.running and pgv.in_recovery is False
            self.router.follow((self.me.host, self.me.port) if leading else None)
        self.facts.activity = ""
        if looks_behind_the_leader(pgv, view, self.cfg.name):
            pgv = with_fresh_position(pgv, self.pg.observe(s.retry_timeout))
        store_ok, info = view is not None, self._member_info(pgv)  # one info for store and API
        if view is not None and not trouble:  # after a store call timed out, spare the lease
            store_ok = self._publish_member(pgv, view, info)
        self._store_trouble = trouble or not store_ok
        self._publish(pgv, view, store_ok, info)
        self.telemetry.loop_done(obs, decision, time.monotonic() - loop_started, pgv, Facts(
            self.lease.deadline if self.lease.held else 0.0, self.fencer.armed, self.fencer.deadline))

    def _site_readings(self, view: ClusterView | None, s: ClusterSettings) -> tuple[SiteReading, ...]:
        """The other sites, as the background probe last read them. Every member probes (a
        replica may have to promote, a primary may not hold the lease); readings older than a
        few loops count as none."""
        if view is None:
            return ()
        self.sites.want(view.site.peers, s.loop_wait)
        return self.sites.latest(max_age=3 * s.loop_wait + 1.0)

    def _leader_timeline(self) -> int | None:
        view = self._view
        if view is not None and view.leader is not None and view.leader.name == self.cfg.name and \
                view.settings.standby_cluster is not None:
            # A standby leader's upstream is the writable site it streams from (core/standby.py).
            tls = [r.timeline for r in self.sites.latest(3 * view.settings.loop_wait + 1.0)
                   if r.writable and r.timeline is not None]
            return max(tls) if tls else None
        if view is None or view.leader is None or view.leader.name == self.cfg.name:
            return None
        m = view.members.get(view.leader.name)
        return m.timeline if m is not None else None

    def _leader_has_slots(self) -> bool:
        view = self._view
        m = view.members.get(view.leader.name) if view is not None and view.leader is not None else None
        return m is not None and bool(m.logical_slots)

    def _observe_pg(self, s: ClusterSettings) -> PgView:
        pgv = self.pg.observe(s.retry_timeout)
        if pgv.running:
            self.facts.start_error = ""  # it started after all: the last failure is history
        now = time.monotonic()
        self._streaming.saw(pgv, self._leader_timeline(), now)
        not_streaming_for = self._streaming.not_streaming_for(now)
        self._unhealthy.saw(pgv, now)
        if pgv.system_id is not None and self._ledger_sysid != pgv.system_id:
            if self._ledger_sysid is not None:  # another cluster's data: its copies are not ours
                self.facts.slot_copies.clear()
            self._ledger_sysid = pgv.system_id
        # The controller tracks sync_applied_lsn itself (it follows the server's live setting).
        pgv = replace(pgv, rewind_failed=self.facts.rewind_failed, not_streaming_for=not_streaming_for,
                      unhealthy_for=self._unhealthy.unhealthy_for(now),
                      start_failures=self.facts.start_failures, slot_copies=dict(self.facts.slot_copies))
        if pgv.healthy and self._logical_due(pgv, s, now):
            # A primary: declarations to reconcile, slots for candidates to copy; a standby: its
            # copies of the primary's slots (core/slot_copies.py).
            objs = self._logical_reader.read(s.retry_timeout)
            if objs is not None:
                self._logical_read_at = now
                marks = (*objs.publications.values(), *objs.subscriptions.values())
                self._logical_seen = bool(objs.slots) or any(c and c.startswith(MARK) for c in marks)
                pgv = replace(pgv, logical=objs)
        self._last_pg = pgv
        return pgv

    def _logical_due(self, pgv: PgView, s: ClusterSettings, now: float) -> bool:
        return logical_read_due(primary=pgv.in_recovery is False, seen=self._logical_seen,
                                leader_has_slots=self._leader_has_slots(),
                                declared=bool(s.publications or s.subscriptions),
                                since_last_read=now - self._logical_read_at)

    def _snapshot(self, now: float) -> ClusterView | None:
        t = self.lease.call_timeout(now, self._settings.retry_timeout)
        try:
            view = self.store.snapshot(t)
        except StoreError as e:
            log.warning("store unreachable: %s", e)
            return None
        self._view, self._view_at = view, time.monotonic()
        return view

    def _adopt_settings(self, view: ClusterView) -> None:
        if view.settings_token == "" or view.settings_token == self._settings_token:
            return
        changed = self._settings_token is not None and view.settings != self._settings
        self._settings = view.settings
        self._settings_token = view.settings_token
        if changed:
            log.info("cluster settings changed; applying")
            up: UpstreamTuple | None = None
            prev = self._last_pg.upstream if self._last_pg is not None else None
            m = view.members.get(prev) if prev else None
            src = source_upstream(view.settings)
            if m is not None:
                up = (m.name, m.host, m.port)
            elif src is not None and self.lease.held:  # a standby leader keeps its stream
                up = (src.name, src.host, src.port, src.dsn, src.slot)
            try:
                self.pg.reconfigure(up, self.facts.sync_applied, view.settings)
            except Exception as e:
                log.warning("applying settings failed: %s", e)

    def _member_info(self, pgv: PgView) -> MemberInfo:
        standby_leader = self.lease.held and self._settings.standby_cluster is not None
        return self.card.info(pgv, standby_leader, self.facts.activity, self._leaving_sync)

    def _publish_member(self, pgv: PgView, view: ClusterView, info: MemberInfo | None = None) -> bool:
        s = self._settings
        info = info if info is not None else self._member_info(pgv)
        t = self.lease.call_timeout(time.monotonic(), s.retry_timeout)
        try:
            self.store.publish_member(info, s.ttl, t)
            # This loop's snapshot shows what the optime key holds: an idle primary's LSN does
            # not move, and rewriting it would be a store write every loop for nothing.
            if self.lease.held and info.role == Role.PRIMARY and info.lsn is not None and \
                    info.lsn != view.leader_lsn:
                self.store.set_optime(info.lsn, t)
            if self.lease.held and view.settings_token == "":
                self.store.set_settings(self.seed, None, t)
        except StoreError as e:
            log.warning("publishing member state failed: %s", e)
            return False
        return True

    def _publish(self, pgv: PgView, view: ClusterView | None, store_ok: bool,
                 info: MemberInfo | None = None) -> None:
        self.holder.set(NodeState(
            member=info if info is not None else self._member_info(pgv),
            cluster=view if view is not None else self._view, cluster_at=self._view_at,
            store_ok=store_ok, holds_lease=self.lease.held, last_loop_at=time.monotonic(),
            started_at=self.started_at, pg_sync=self.facts.sync_applied, message=self._message,
            start_error=self.facts.start_error,
            logical_error=self.exec.logical.last_error, pg_log=str(self.pg.log_file),
            pgbouncer=self.router.view() if self.router is not None else None,
        ))
