"""Carries out the core's actions against PostgreSQL and the store, in order, stopping at the first
that fails. Decisions stay in `pgwarden.core`; this file only knows how, never whether."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pgwarden.agent.lease import LeaseKeeper
from pgwarden.config.schema import ClusterSettings, NodeConfig
from pgwarden.core import actions as A
from pgwarden.core.model import (
    NO_SYNC,
    ClusterView,
    HistoryEntry,
    PgView,
    SyncConfig,
)
from pgwarden.fence.supervisor import Fencer
from pgwarden.postgres.controller import PostgresController, PostgresError
from pgwarden.store.base import Store, StoreError, dump_settings

log = logging.getLogger("pgwarden.agent")

# Long operations get generous deadlines of their own; they never run while we hold a lease
# except promote/start-in-place, which are clipped to the lease (see `_lease_budget`).
CLONE_TIMEOUT = 3600.0
START_TIMEOUT = 60.0
# A standby may need WAL from its upstream before it accepts connections; the loop must not sit
# in pg_ctl meanwhile (observe() reports it as running but not yet healthy).
REPLICA_START_WAIT = 5.0
STOP_TIMEOUT = 30.0
SLOT_RETENTION = 600.0
SLOT_RECHECK = 30.0  # seconds: look at the slots again even when nothing we know of changed

# Actions that change nothing the next decision reads from PostgreSQL: no need to observe again.
BOOKKEEPING = (A.RenewLease, A.EnsureSlots, A.ClearFailover, A.PublishHistory, A.WriteSyncState)


class ActionFailed(Exception):
    pass


@dataclass
class LocalFacts:
    """What the runner remembers between loops that PostgreSQL itself does not tell."""

    rewind_failed: bool = False
    start_failures: int = 0
    sync_applied: SyncConfig = NO_SYNC
    # The slot set last made sure of, for which postmaster, and when: a rewind, a re-clone or a
    # restart can take slots away while the wanted set stays the same.
    slots: tuple[int | None, frozenset[str]] | None = None
    slots_checked: float = 0.0
    slot_seen: dict[str, float] = field(default_factory=dict)
    restart_requested: bool = False
    reinit_requested: bool = False
    activity: str = ""
    history_published: int = 0


class Executor:
    def __init__(
        self,
        cfg: NodeConfig,
        pg: PostgresController,
        store: Store,
        lease: LeaseKeeper,
        fencer: Fencer,
        facts: LocalFacts,
        settings: Callable[[], ClusterSettings],
        seed: ClusterSettings,
    ) -> None:
        self.cfg = cfg
        self.pg = pg
        self.store = store
        self.lease = lease
        self.fencer = fencer
        self.facts = facts
        self.settings = settings
        self.seed = seed
        self.name = cfg.name

    # -- helpers -------------------------------------------------------------------------------
    def _timeout(self) -> float:
        s = self.settings()
        return self.lease.call_timeout(time.monotonic(), s.retry_timeout)

    def _lease_budget(self, cap: float) -> float:
        """Time left before the lease deadline, less what stopping PostgreSQL needs."""
        if not self.lease.held:
            return cap
        return max(1.0, min(cap, self.lease.deadline - time.monotonic() - 0.5))

    def _arm(self, pm_pid: int | None) -> None:
        self.fencer.arm(self.lease.deadline, pm_pid)

    def run(self, actions: tuple[A.Action, ...], view: ClusterView | None, pgv: PgView) -> bool:
        """Execute in order; False as soon as one fails (the rest assumed it succeeded)."""
        for action in actions:
            try:
                ok = self._one(action, view, pgv)
            except (StoreError, PostgresError, OSError, RuntimeError, ValueError) as e:
                log.warning("%s failed: %s", type(action).__name__, e)
                ok = False
            if not ok:
                return False
        return True

    # -- the actions ---------------------------------------------------------------------------
    def _one(self, a: A.Action, view: ClusterView | None, pgv: PgView) -> bool:
        s = self.settings()
        if isinstance(a, A.RenewLease):
            return self.renew(s)
        if isinstance(a, A.AcquireLease):
            sent = time.monotonic()
            if not self.store.acquire_leader(self.name, s.ttl, self._timeout()):
                log.info("lost the race for the leader lease")
                return False
            self.lease.renewed(sent, s.ttl)
            log.info("acquired the leader lease")
            self._arm(pgv.postmaster_pid)
            return True
        if isinstance(a, A.ReleaseLease):
            ok = self.store.release_leader(self.name, self._timeout())
            self.lease.lost()
            self.fencer.disarm()
            log.info("released the leader lease")
            return ok
        if isinstance(a, A.Promote):
            self._arm(pgv.postmaster_pid)
            self.facts.activity = "promoting"
            log.info("promoting PostgreSQL")
            self.pg.promote(self._lease_budget(10.0))
            # Rule 4: still ours right after promotion? If not, stop writes at once.
            if not self.renew(s):
                log.error("lease lost during promotion: demoting at once")
                self.pg.demote(None, STOP_TIMEOUT)
                self.fencer.disarm()
                return False
            return True
        if isinstance(a, A.Demote):
            log.warning("demoting: %s", a.reason)
            self.facts.activity = "demoting"
            up = (a.upstream.name, a.upstream.host, a.upstream.port) if a.upstream else None
            self.pg.demote(up, self._lease_budget(STOP_TIMEOUT))
            self.fencer.disarm()
            self.facts.sync_applied = NO_SYNC
            return True
        if isinstance(a, A.StartPostgres):
            up = (a.upstream.name, a.upstream.host, a.upstream.port) if a.upstream else None
            if a.role == "primary":
                if not self.lease.held:
                    return False
                self._arm(None)  # the new postmaster's pid is recorded once it runs
                self.pg.start(role="primary", upstream=None, wait_timeout=self._lease_budget(START_TIMEOUT))
                self._arm(self.pg.postmaster_pid())
            else:
                try:
                    self.pg.start(role="replica", upstream=up, wait_timeout=REPLICA_START_WAIT)
                except Exception:
                    self.facts.start_failures += 1
                    raise
                self.facts.start_failures = 0
            return True
        if isinstance(a, A.StopPostgres):
            log.info("stopping PostgreSQL (%s): %s", a.mode, a.reason)
            self.pg.stop("immediate" if a.mode == "immediate" else "fast", STOP_TIMEOUT)
            return True
        if isinstance(a, A.RestartPostgres):
            log.info("restarting PostgreSQL: %s", a.reason)
            self.pg.stop("fast", STOP_TIMEOUT)
            return True  # the next loop starts it in the role the core chooses
        if isinstance(a, A.Follow):
            up = (a.upstream.name, a.upstream.host, a.upstream.port)
            log.info("following %s", a.upstream.name)
            self.pg.reconfigure(up, self.facts.sync_applied, s)
            return True
        if isinstance(a, A.Rewind):
            self.facts.activity = f"rewinding from {a.source.name}"
            log.info("pg_rewind from %s", a.source.name)
            if pgv.running:
                self.pg.stop("fast", STOP_TIMEOUT)
            if not self.pg.rewind(a.source.host, a.source.port, CLONE_TIMEOUT):
                self.facts.rewind_failed = True
                return False
            self.facts.start_failures = 0
            return True
        if isinstance(a, A.Reclone):
            log.warning("re-cloning from %s: %s", a.source.name, a.reason)
            return self._clone(a.source)
        if isinstance(a, A.Clone):
            return self._clone(a.source)
        if isinstance(a, A.TakeInitLock):
            return self.store.take_init_lock(self.name, max(s.ttl, 60.0), self._timeout())
        if isinstance(a, A.Bootstrap):
            self.facts.activity = "bootstrapping"
            if pgv.running:
                self.pg.stop("immediate", STOP_TIMEOUT)
            self.pg.wipe()
            sysid = self.pg.bootstrap()
            return self._initialized(sysid)
        if isinstance(a, A.AdoptExistingData):
            return self._initialized(a.system_id)
        if isinstance(a, A.ApplySync):
            log.info("synchronous_standby_names -> %s", _fmt_sync(a.config))
            self.pg.set_sync(a.config)
            self.facts.sync_applied = a.config
            return True
        if isinstance(a, A.WriteSyncState):
            log.info("store sync promise -> %d of %s", a.state.quorum, sorted(a.state.members))
            return self.store.set_sync(a.state, a.token, self._timeout())
        if isinstance(a, A.EnsureSlots):
            # A member's key vanishes while it is being cloned or restarted; keep its slot for
            # SLOT_RETENTION so it finds its WAL when it comes back.
            now = time.monotonic()
            for n in a.names:
                self.facts.slot_seen[n] = now
            keep = frozenset(n for n, t in self.facts.slot_seen.items() if now - t < SLOT_RETENTION)
            key = (pgv.postmaster_pid, keep)
            if self.facts.slots != key or now - self.facts.slots_checked > SLOT_RECHECK:
                self.pg.ensure_slots(set(keep))
                self.facts.slots = key
                self.facts.slots_checked = now
            return True
        if isinstance(a, A.PublishHistory):
            return self._publish_history(a.timeline, view)
        if isinstance(a, A.ClearFailover):
            self.store.clear_failover(self._timeout())
            return True
        raise ActionFailed(f"unknown action {a!r}")

    def renew(self, s: ClusterSettings) -> bool:
        sent = time.monotonic()
        ok = self.store.renew_leader(self.name, s.ttl, self.lease.call_timeout(sent, s.retry_timeout))
        if ok:
            self.lease.renewed(sent, s.ttl)
            if self.fencer.armed:
                self._arm(self.pg.postmaster_pid())
        return ok

    def _clone(self, src: A.Upstream) -> bool:
        self.facts.activity = f"cloning from {src.name}"
        log.info("cloning from %s (%s:%d)", src.name, src.host, src.port)
        self.pg.stop("immediate", STOP_TIMEOUT)
        self.pg.clone(src.host, src.port, CLONE_TIMEOUT)
        up = (src.name, src.host, src.port)
        self.pg.start(role="replica", upstream=up, wait_timeout=REPLICA_START_WAIT)
        self.facts.rewind_failed = False
        return True

    def _initialized(self, sysid: str) -> bool:
        t = self._timeout()
        if not self.store.set_initialized(sysid, t):
            log.error("another node initialised the cluster first")
            return False
        # Seed the cluster-wide settings from our file (create-only: never overwrite).
        if self.store.set_settings(self.seed, None, t):
            log.info("seeded cluster settings: %s", dump_settings(self.seed))
        self.store.release_init_lock(self.name, t)
        log.info("cluster initialised with system id %s", sysid)
        return True

    def _publish_history(self, timeline: int, view: ClusterView | None) -> bool:
        rows = self.pg.read_timeline_history(timeline)
        known = {e.timeline: e for e in (view.history if view else ())}
        entries: list[HistoryEntry] = []
        for tl, lsn, reason in rows:
            old = known.get(tl)
            if old is not None:
                entries.append(old)
            else:
                new_leader = self.name if tl == timeline - 1 else None
                entries.append(HistoryEntry(tl, lsn, reason, time.time(), new_leader))
        self.store.set_history(tuple(entries), self._timeout())
        return True


def _fmt_sync(c: SyncConfig) -> str:
    if c.empty:
        return "''"
    return f"ANY {c.quorum} ({', '.join(sorted(c.members))})"
