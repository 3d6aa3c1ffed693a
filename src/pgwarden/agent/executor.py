"""Carries out the core's actions against PostgreSQL and the store, in order, stopping at the first
that fails. Decisions stay in `pgwarden.core`; this file only knows how, never whether."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import assert_never

from pgwarden.agent.lease import LeaseKeeper
from pgwarden.agent.logical import LogicalWorker
from pgwarden.agent.ports import Clock, FencerPort, PostgresPort, RouterPort
from pgwarden.agent.slot_ledger import SlotLedger
from pgwarden.config.load import replace as replace_settings
from pgwarden.config.schema import ClusterSettings, NodeConfig
from pgwarden.core import actions as A
from pgwarden.core.failsafe import AcquireOutcome
from pgwarden.core.history import merge_history
from pgwarden.core.model import (
    NO_SYNC,
    ClusterView,
    PgView,
    SyncConfig,
)
from pgwarden.core.settings import LEASE_MARGIN
from pgwarden.postgres.controller import PostgresError, UpstreamTuple
from pgwarden.postgres.server import StartError
from pgwarden.store.base import StoreError
from pgwarden.store.cluster import ClusterStore
from pgwarden.store.documents import dump_settings

log = logging.getLogger("pgwarden.agent")

# Long operations get generous deadlines of their own; they never run while we hold a lease
# except promote/start-in-place, which are clipped to the lease (see `_lease_budget`).
CLONE_TIMEOUT = 3600.0
START_TIMEOUT = 60.0
# A standby may need WAL from its upstream before it accepts connections; the loop must not sit
# in pg_ctl meanwhile (observe() reports it as running but not yet healthy).
REPLICA_START_WAIT = 5.0
STOP_TIMEOUT = 30.0
SLOT_RECHECK = 30.0  # seconds: look at the slots again even when nothing we know of changed

# Actions that change nothing the next decision reads from PostgreSQL: no need to observe again.
BOOKKEEPING = (A.RenewLease, A.EnsureSlots, A.ClearFailover, A.PublishHistory, A.WriteSyncState,
               A.ExtendLease, A.WriteFailsafeMembers, A.ApplyLogical, A.AdvanceLogicalSlots,
               A.DropLogicalSlots, A.SetStandbySlots, A.RecordEpoch)


class ActionFailed(Exception):
    pass


@dataclass
class LocalFacts:
    """What the runner remembers between loops that PostgreSQL itself does not tell."""

    rewind_failed: bool = False
    start_failures: int = 0
    # Why the last start of PostgreSQL failed (its FATAL line), until one succeeds; for /status.
    start_error: str = ""
    sync_applied: SyncConfig = NO_SYNC
    # The slot set last made sure of, for which postmaster, and when: a rewind, a re-clone or a
    # restart can take slots away while the wanted set stays the same.
    slots: tuple[int | None, frozenset[str]] | None = None
    slots_checked: float = 0.0
    slot_seen: dict[str, float] = field(default_factory=dict)
    # PostgreSQL was stopped for a requested restart and has not been started since.
    restart_pending: bool = False
    activity: str = ""
    history_published: int = 0
    promoted_because: str = ""  # the last Promote's reason, for the timeline history
    # Failsafe sets written since the last read that may have landed: (token written against,
    # value). The runner drops an entry once a read shows the token moved (rule 17).
    failsafe_pending: list[tuple[str, frozenset[str]]] = field(default_factory=list)
    # Logical slots this agent copied onto this standby: name -> timeline (core/slot_copies.py).
    slot_copies: dict[str, int] = field(default_factory=dict)
    standby_slots: tuple[int | None, frozenset[str]] | None = None  # applied for which postmaster


class Executor:
    def __init__(
        self,
        cfg: NodeConfig,
        pg: PostgresPort,
        store: ClusterStore,
        lease: LeaseKeeper,
        fencer: FencerPort,
        facts: LocalFacts,
        settings: Callable[[], ClusterSettings],
        seed: ClusterSettings,
        router: RouterPort | None = None,
        clock: Clock = time.monotonic,
        wall: Clock = time.time,
    ) -> None:
        # `clock` is read for every deadline (the lease's is on it), `wall` only for history
        # entries; the scenario tests pass a simulated pair.
        self.clock = clock
        self.wall = wall
        self.router = router
        self.cfg = cfg
        self.pg = pg
        self.store = store
        self.lease = lease
        self.fencer = fencer
        self.facts = facts
        self.settings = settings
        self.seed = seed
        self.name = cfg.name
        self.store_failed = False  # the last run() ended on a store error
        # What the last run() did with an AcquireLease (rule 17: may its votes be handed back?).
        self.acquire_outcome: AcquireOutcome = "not tried"
        self.logical = LogicalWorker(pg.apply_logical)
        self.slot_ledger: SlotLedger | None = None  # set by the runner

    # -- helpers -------------------------------------------------------------------------------
    def _timeout(self) -> float:
        s = self.settings()
        return self.lease.call_timeout(self.clock(), s.retry_timeout)

    def _lease_budget(self, cap: float, floor: float = 1.0) -> float:
        """Time left before the lease deadline, less what stopping PostgreSQL needs (rule 15).
        `floor` keeps a stop or start from being given no time at all: past the deadline the
        fencer stops the postmaster anyway."""
        if not self.lease.held:
            return cap
        return max(floor, min(cap, self.lease.deadline - self.clock() - 0.5))

    def _arm(self, pm_pid: int | None) -> None:
        self.fencer.arm(self.lease.deadline, pm_pid)

    def run(self, actions: tuple[A.Action, ...], view: ClusterView | None, pgv: PgView) -> bool:
        """Execute in order; False as soon as one fails (the rest assumed it succeeded)."""
        self.store_failed = False
        self.acquire_outcome = "not tried"
        for action in actions:
            try:
                ok = self._one(action, view, pgv)
            except StoreError as e:
                self.store_failed = True  # the runner spares the lease the rest of this loop's calls
                log.warning("%s failed: %s", type(action).__name__, e)
                ok = False
            except (PostgresError, OSError, RuntimeError, ValueError) as e:
                log.warning("%s failed: %s", type(action).__name__, e)
                if isinstance(e, StartError):
                    self.facts.start_error = str(e)
                ok = False
            if not ok:
                return False
        return True

    # -- the actions ---------------------------------------------------------------------------
    def _one(self, a: A.Action, view: ClusterView | None, pgv: PgView) -> bool:
        s = self.settings()
        match a:
            case A.RenewLease():
                # Not holding the lease, the key names us (the core asks only then), and our
                # previous run left the fencer armed: it held the lease on this host, with a
                # primary to fence. Take the key over from that run's lease (SAFETY rule 5; see
                # docs/architecture.md, "Taking the leader key back after a restart").
                return self.renew(s, adopt=not self.lease.held and self.fencer.armed)
            case A.AcquireLease(not_after=not_after, over=over, sync_token=sync_token):
                sent = self.clock()
                self.acquire_outcome = "in doubt"  # until the store answers
                if over is not None:  # rule 16: the old key at its version, the sync document rewritten
                    got = view is not None and self.store.take_over_leader(
                        self.name, over, view.sync, sync_token, s.ttl, self._timeout())
                else:
                    got = self.store.acquire_leader(self.name, s.ttl, self._timeout())
                if not got:
                    self.acquire_outcome = "lost"
                    log.info("lost the race for the leader lease")
                    return False
                if not_after is not None and time.monotonic() > not_after:
                    # Rule 17: the failsafe votes may have run out; nothing was promoted yet.
                    log.warning("took the leader lease too late for the failsafe votes: releasing it")
                    self.store.release_leader(self.name, self._timeout())
                    return False
                self.lease.renewed(sent, s.ttl)
                self.acquire_outcome = "won"
                log.info("acquired the leader lease")
                self._arm(pgv.postmaster_pid)
                return True
            case A.ReleaseLease():
                ok = self.store.release_leader(self.name, self._timeout())
                self.lease.lost()
                self.fencer.disarm()
                log.info("released the leader lease")
                return ok
            case A.ExtendLease(deadline=deadline):
                self.lease.extend(deadline)
                if self.fencer.armed:
                    self._arm(self.pg.postmaster_pid())
                return True
            case A.WriteFailsafeMembers(members=members, token=token):
                entry = (token, members)
                self.facts.failsafe_pending.append(entry)  # in doubt until a read shows the outcome
                if not self.store.set_failsafe_members(members, token, self._timeout()):
                    self.facts.failsafe_pending.remove(entry)  # a lost compare-and-swap never lands
                    return False
                log.info("failsafe members -> %s", ", ".join(sorted(members)) or "none")
                return True
            case A.Promote(sync=sync_after, why=why):
                self.facts.promoted_because = why
                return self._promote(s, pgv, sync_after)
            case A.Demote(upstream=upstream, reason=reason):
                log.warning("demoting: %s", reason)
                self.facts.activity = "demoting"
                self._demote(_up(upstream))
                return True
            case A.StartPostgres(role="primary"):
                return self._start_primary()
            case A.StartPostgres(upstream=upstream):
                self.fencer.disarm()  # a standby accepts no writes: nothing to fence
                try:
                    self.pg.start(role="replica", upstream=_up(upstream), wait_timeout=REPLICA_START_WAIT)
                except Exception:
                    self.facts.start_failures += 1
                    raise
                self.facts.start_failures = 0
                self.facts.restart_pending = False
                return True
            case A.StopPostgres(mode=mode, reason=reason, restart=restart):
                log.info("stopping PostgreSQL (%s): %s", mode, reason)
                # A primary under our lease must be down before the deadline (rules 2, 15): the
                # stop escalates to immediate and SIGKILL within the budget.
                self.pg.stop("immediate" if mode == "immediate" else "fast", self._lease_budget(STOP_TIMEOUT))
                if restart:
                    self.facts.restart_pending = True
                return True
            case A.Wipe(reason=reason):
                log.warning("wiping the data directory: %s", reason)
                self.pg.stop("immediate", STOP_TIMEOUT)
                self.pg.wipe()
                return True
            case A.Follow(upstream=upstream):
                log.info("following %s", upstream.name)
                self.pg.reconfigure(_up(upstream), self.facts.sync_applied, s)
                return True
            case A.Rewind(source=src):
                self.facts.activity = f"rewinding from {src.name}"
                log.info("pg_rewind from %s", src.name)
                if pgv.running:
                    self.pg.stop("fast", STOP_TIMEOUT)
                if not self.pg.rewind(src.host, src.port, CLONE_TIMEOUT, dsn=src.dsn):
                    self.facts.rewind_failed = True
                    return False
                self.facts.start_failures = 0
                return True
            case A.Reclone(source=src, reason=reason):
                log.warning("re-cloning from %s: %s", src.name, reason)
                return self._clone(src)
            case A.Clone(source=src):
                return self._clone(src)
            case A.TakeInitLock():
                return self.store.take_init_lock(self.name, max(s.ttl, 60.0), self._timeout())
            case A.Bootstrap(site_source=source):
                self.facts.activity = "bootstrapping"
                if pgv.running:
                    self.pg.stop("immediate", STOP_TIMEOUT)
                self.pg.wipe()
                if source is not None:  # a standby site: a base backup of its source site
                    log.info("bootstrapping a standby site from %s", source.dsn)
                    self.pg.clone("", 0, CLONE_TIMEOUT, dsn=source.dsn)
                    self.pg.start(role="replica", upstream=_up(source), wait_timeout=REPLICA_START_WAIT)
                    return self._initialized(self.pg.system_id())
                sysid = self.pg.bootstrap()
                return self._initialized(sysid)
            case A.AdoptExistingData(system_id=sysid):
                return self._initialized(sysid)
            case A.ApplySync(config=config):
                log.info("synchronous_standby_names -> %s", _fmt_sync(config))
                self.pg.set_sync(config, self._lease_budget(5.0, floor=0.2))
                self.facts.sync_applied = config
                return True
            case A.WriteSyncState(state=state, token=token):
                log.info("store sync promise -> %d of %s", state.quorum, sorted(state.members))
                return self.store.set_sync(state, token, self._timeout())
            case A.EnsureSlots(names=names, retained=retained):
                self._ensure_slots(names, retained, pgv)
                return True
            case A.PublishHistory(timeline=timeline):
                return self._publish_history(timeline, view)
            case A.HoldClients(until=until):
                if self.router is not None:
                    left = max(0.0, until - self.clock())
                    # A pause that fails only costs clients an error: the switchover goes on.
                    self.router.hand_over(min(self.router.pause_timeout, left))
                return True
            case A.ClearFailover():
                self.store.clear_failover(self._timeout())
                return True
            case A.JoinSite(dsn=dsn, epoch=epoch):
                return self._join_site(view, dsn, epoch)
            case A.RecordEpoch(epoch=epoch):
                assert view is not None
                log.info("site epoch %d -> %d (seen at the source site)", view.site.epoch, epoch)
                return self.store.set_site(replace(view.site, epoch=epoch), view.site.token, self._timeout())
            case A.ApplyLogical(change=change):
                self.logical.submit(change)  # off the loop; the next observation shows it done
                return True
            case A.CopyLogicalSlots(names=names, source=src):
                copied = self.pg.copy_logical_slots(names, src.host, src.port, s.retry_timeout * 3)
                for name in copied:
                    self.facts.slot_copies[name] = pgv.timeline or 0
                self._record_copies(pgv)
                return bool(copied)  # nothing copied: no restart
            case A.AdvanceLogicalSlots(targets=targets):
                self.logical.run_later("advance slot copies",
                                       lambda t: self.pg.advance_logical_slots(targets, t), quiet=True)
                return True
            case A.SetStandbySlots(members=members):
                key = (pgv.postmaster_pid, members)
                if self.facts.standby_slots != key:
                    self.pg.set_standby_slots(members, s.retry_timeout * 3)
                    self.facts.standby_slots = key
                return True
            case A.DropLogicalSlots(names=names):
                self.pg.drop_logical_slots(names, s.retry_timeout * 3)
                for name in names:
                    self.facts.slot_copies.pop(name, None)
                self._record_copies(pgv)
                return True
            case _:
                assert_never(a)

    def _promote(self, s: ClusterSettings, pgv: PgView, sync_after: SyncConfig) -> bool:
        self._arm(pgv.postmaster_pid)
        self.facts.activity = "promoting"
        log.info("promoting PostgreSQL")
        self.pg.promote(self._lease_budget(10.0), sync_after)
        self.facts.sync_applied = sync_after
        # Our copies are the real slots now; if we are ever a standby again they are not copies.
        self.facts.slot_copies.clear()
        self._record_copies(pgv)
        # Rule 4: still ours right after promotion? If not (or we cannot tell), stop writes at once.
        try:
            kept = self.renew(s)
        except Exception as e:  # any failure to confirm counts as a lost lease here
            log.error("renewing after promotion failed: %s", e)
            kept = False
        if not kept:
            log.error("lease lost during promotion: demoting at once")
            self._demote(None)
            return False
        return True

    def _record_copies(self, pgv: PgView) -> None:
        if self.slot_ledger is not None:
            self.slot_ledger.save(pgv.system_id, self.facts.slot_copies)

    def _demote(self, upstream: UpstreamTuple | None) -> None:
        """Stop writes within the lease (escalating to immediate, then SIGKILL), disarm the fencer
        only once the server is down, then start it as a standby (rule 3)."""
        self.pg.stop("fast", self._lease_budget(STOP_TIMEOUT))
        self.fencer.disarm()
        self.facts.sync_applied = NO_SYNC
        self.pg.start(role="replica", upstream=upstream, wait_timeout=REPLICA_START_WAIT)

    def _start_primary(self) -> bool:
        """Rule 12, sharpened: a primary starts only under a lease still valid by our own clock
        (not just `held`, which a long stop can leave stale), with the fencer armed for that
        deadline before the postmaster exists; it finds the postmaster through postmaster.pid
        even before we learn its pid."""
        now = self.clock()
        if not self.lease.valid(now):
            log.warning("not starting as primary: the lease is no longer valid")
            return False
        self._arm(None)
        try:
            self.pg.start(role="primary", upstream=None, wait_timeout=self._lease_budget(START_TIMEOUT))
        finally:
            self._arm(self.pg.postmaster_pid())
        self.facts.restart_pending = False
        return True

    def _ensure_slots(self, names: frozenset[str], retained: frozenset[str], pgv: PgView) -> None:
        # Which to keep is the core's (core/slots.py); we record when each was wanted for it.
        now = self.clock()
        for n in names:
            self.facts.slot_seen[n] = now
        keep = names | retained
        key = (pgv.postmaster_pid, keep)
        if self.facts.slots != key or now - self.facts.slots_checked > SLOT_RECHECK:
            self.pg.ensure_slots(set(keep))
            self.facts.slots = key
            self.facts.slots_checked = now

    def renew(self, s: ClusterSettings, adopt: bool = False) -> bool:
        sent = self.clock()
        # A lowered ttl (edit-config) moves the key onto a shorter lease within this call: the
        # deadline, and the fencer's, come down first, so neither an answer we never hear nor our
        # death right after the store applied it leaves a deadline past the key's expiry (rule 2).
        if self.lease.shorten(sent + s.ttl - LEASE_MARGIN) and self.fencer.armed:
            self._arm(self.pg.postmaster_pid())
        ok = self.store.renew_leader(self.name, s.ttl, self.lease.call_timeout(sent, s.retry_timeout), adopt)
        if ok:
            if adopt:
                log.info("took the leader key back from this agent's previous run")
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

    def _join_site(self, view: ClusterView | None, source: str, epoch: int) -> bool:
        """Rule 18: the epoch first, then standby_cluster; both compare-and-swap on this loop's
        snapshot, so a concurrent `ctl promote-cluster` or edit wins and we decide again."""
        assert view is not None
        t = self._timeout()
        log.warning("becoming a standby site of %s (epoch %d)", source, epoch)
        if epoch > view.site.epoch and \
                not self.store.set_site(replace(view.site, epoch=epoch), view.site.token, t):
            return False
        new = replace_settings(view.settings, standby_cluster={"source": source})
        return self.store.set_settings(new, view.settings_token, t)

    def _publish_history(self, timeline: int, view: ClusterView | None) -> bool:
        entries = merge_history(self.pg.read_timeline_history(timeline), view.history if view else (),
                                self.name, timeline, self.wall(), self.facts.promoted_because)
        self.store.set_history(entries, self._timeout())
        return True


def _fmt_sync(c: SyncConfig) -> str:
    if c.empty:
        return "''"
    return f"ANY {c.quorum} ({', '.join(sorted(c.members))})"


def _up(u: A.Upstream | None) -> UpstreamTuple | None:
    if u is None:
        return None
    return (u.name, u.host, u.port, u.dsn, u.slot) if u.dsn else (u.name, u.host, u.port)
