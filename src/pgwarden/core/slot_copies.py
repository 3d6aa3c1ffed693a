"""Logical slots that survive a failover on PostgreSQL 15 and 16 (SAFETY rule 19): every failover
candidate keeps a copy of each of the primary's logical slots, never ahead of its own WAL.

The copy starts as the primary's slot state file, written into the standby's pg_replslot and
loaded by a restart (a standby cannot create a logical slot before 16, nor one that continues the
primary's); from then on the standby advances it with pg_replication_slot_advance, to no further
than both the primary's slot and its own replay position. Why "never ahead of its own WAL": after
a promotion, a slot whose confirmed position lies past the point where the new timeline began
would skip the new primary's first changes in that range, silently. So a copy is trusted only
while that cannot be: made by this agent, on this timeline or on an earlier one it does not
reach past the end of (the store's timeline history). Anything else is dropped and copied anew.
On 17 and later PostgreSQL's own slot synchronisation does this (`failover = true`).

Loading copies restarts the candidate, so candidates take turns (`turn_holder`): one restarts
while every other candidate streams, in name order, so a subscription created on the
primary does not take every standby (and with them the synchronous promise and the read
replicas) down at once. A candidate whose turn it is first leaves the synchronous standbys
(`leaving_sync`) and restarts once the primary no longer waits for it, so in a synchronous mode
the restart holds up no commit. Both waits are bounded by COPY_TURN_PATIENCE: a peer that never
streams again, or a leader that never lets go, must not keep a candidate from its copies for
ever (docs/architecture.md, rule 19).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pgwarden.core.actions import (
    Action,
    AdvanceLogicalSlots,
    CopyLogicalSlots,
    DropLogicalSlots,
    SetStandbySlots,
    StopPostgres,
    Upstream,
)
from pgwarden.core.logical import SlotInfo
from pgwarden.core.model import ClusterView, HistoryEntry, MemberInfo, Observation, Role

FIRST_NATIVE = 17  # slots with failover = true and sync_replication_slots
# Seconds a candidate puts off the restart that loads its copies while a peer has the turn.
COPY_TURN_PATIENCE = 30.0


@dataclass(frozen=True)
class SlotPlan:
    copy: frozenset[str]
    advance: tuple[tuple[str, int], ...]
    drop: frozenset[str]

    @property
    def empty(self) -> bool:
        return not (self.copy or self.advance or self.drop)


def trusted(name: str, slot: SlotInfo, copies: Mapping[str, int], timeline: int | None,
            history: tuple[HistoryEntry, ...]) -> bool:
    """A local copy we made on timeline `copies[name]` that does not reach past the end of any
    timeline between that one and ours."""
    made_on = copies.get(name)
    if made_on is None or timeline is None or made_on > timeline or slot.lost:
        return False
    for e in history:
        if made_on <= e.timeline < timeline and (slot.confirmed_flush or 0) > e.switch_lsn:
            return False
    return True


def plan(leader: Mapping[str, int], local: Mapping[str, SlotInfo], copies: Mapping[str, int],
         timeline: int | None, history: tuple[HistoryEntry, ...], replayed: int | None) -> SlotPlan:
    drop = frozenset(n for n, s in local.items()
                     if n not in leader or not trusted(n, s, copies, timeline, history)
                     or (s.confirmed_flush or 0) > (replayed or 0))
    advance: list[tuple[str, int]] = []
    for n, s in sorted(local.items()):
        if n in drop:
            continue
        target = min(leader[n], replayed or 0)
        if target > (s.confirmed_flush or 0):
            advance.append((n, target))
    copy = frozenset(n for n in leader if n not in local)
    return SlotPlan(copy, tuple(advance), drop)


@dataclass(frozen=True)
class _Reading:
    out: tuple[Action, ...]  # what is due whatever the plan (17+: stale failover slots)
    notes: tuple[str, ...]
    plan: SlotPlan | None  # None: nothing to keep here this loop


def _read(obs: Observation, leader: MemberInfo) -> _Reading:
    pg = obs.pg
    if pg.logical is None or not pg.healthy or pg.version is None:
        return _Reading((), (), None)
    local = dict(pg.logical.slots)
    wanted = dict(leader.logical_slots)
    out: tuple[Action, ...] = ()
    notes: tuple[str, ...] = ()
    if pg.version >= FIRST_NATIVE:
        # A failover slot this standby did not get from the slot-sync worker (a demoted
        # primary's own) makes that worker stop with "same name slot already exists": drop it
        # (patroni#3493, cloudnative-pg#9969); the worker then syncs the primary's.
        stale = frozenset(n for n, s in local.items() if s.failover and not s.synced)
        if stale:
            out = (DropLogicalSlots(stale),)
            notes = (f"dropping stale failover slots {', '.join(sorted(stale))}",)
        local = {n: s for n, s in local.items() if not s.failover}
        wanted = {n: lsn for n, lsn in wanted.items() if n not in leader.native_slots}
    if obs.me.tags.nofailover or not pg.streaming or (not wanted and not local):
        return _Reading(out, notes, None)
    if not (leader.running and leader.role == Role.PRIMARY):
        # Its published slots are not current while it restarts: dropping our copies for that
        # would lose the slot exactly when a failover may come.
        return _Reading(out, notes, None)
    history = obs.store.history if obs.store is not None else ()
    return _Reading(out, notes, plan(wanted, local, pg.slot_copies, pg.timeline, history, pg.replayed_lsn))


def _leader_plan(obs: Observation) -> tuple[MemberInfo, SlotPlan] | None:
    view = obs.store
    if view is None or view.leader is None or view.leader.name == obs.me.name:
        return None
    leader = view.members.get(view.leader.name)
    r = _read(obs, leader) if leader is not None else None
    return None if leader is None or r is None or r.plan is None else (leader, r.plan)


def pending_copies(obs: Observation) -> frozenset[str]:
    """The leader's slots this candidate would copy (and restart to load) this loop, turns
    aside: the agent's `CopyClock` follows it, and bounds the wait for a turn with it."""
    return copy_state(obs)[0]


def copy_state(obs: Observation) -> tuple[frozenset[str], bool]:
    """`pending_copies` and `leaving_sync` from one reading of the plan: what the agent asks
    after each decision (its CopyClock, and the flag it publishes)."""
    lp = _leader_plan(obs)
    if lp is None:
        return frozenset(), False
    return lp[1].copy, _leaving(obs, *lp)


def leaving_sync(obs: Observation) -> bool:
    """Is it this candidate's turn to restart to load copies? The agent publishes it in its key
    (MemberInfo.leaving_sync), the leader stops choosing it as a synchronous standby
    (leader_sync), and the restart waits until the leader's key no longer names it among the
    standbys its commits wait for (`_why_not_now`): so a restart holds up no commit, wherever
    another standby can take its place (`_may_leave`). Not past COPY_TURN_PATIENCE: the restart
    then goes ahead anyway, and a copy that keeps failing must not keep this standby out of
    the synchronous set for good."""
    return copy_state(obs)[1]


def _leaving(obs: Observation, leader: MemberInfo, p: SlotPlan) -> bool:
    if not p.copy or obs.store is None or obs.store.settings.paused:
        return False
    if obs.copies_pending_for >= COPY_TURN_PATIENCE:
        return False
    return turn_holder(obs, leader) is None and _may_leave(obs, leader)


def _may_leave(obs: Observation, leader: MemberInfo) -> bool:
    """Only where another streaming standby that may be synchronous can stand in. With none,
    leaving would empty the synchronous promise: not strict, the primary would commit
    asynchronously for as long as we wait (up to COPY_TURN_PATIENCE when the copy cannot be
    made yet); strict, it would wait for any member that may be synchronous, this one among
    them (sync.strict_wait), so leaving gains nothing. The restart's short hold-up is the lesser
    cost."""
    view = obs.store
    if view is None:
        return False
    return any(m.streaming and not m.tags.nosync and not m.leaving_sync
               for n, m in view.members.items() if n not in (obs.me.name, leader.name))


def _why_not_now(obs: Observation, leader: MemberInfo, names: str) -> str:
    """Why this candidate does not restart to load copies of `names` this loop ('' if it does)."""
    if obs.store is not None and obs.store.settings.paused:
        return f"paused: not restarting to load copies of {names}"
    holder = turn_holder(obs, leader)
    if holder is not None:
        return f"letting {holder} go first: not restarting yet to load copies of {names}"
    if obs.me.name in leader.waits_for and obs.copies_pending_for < COPY_TURN_PATIENCE and \
            _may_leave(obs, leader):
        # Removal goes store first, then the primary's setting (sync.next_step): the leader's
        # key says when the primary no longer waits for us. Bounded like the turns: a leader
        # that never lets go (an older agent) must not keep us from our copies for ever.
        return (f"leaving the synchronous standbys first: {leader.name} still waits for this "
                f"standby; not restarting yet to load copies of {names}")
    return ""


def turn_holder(obs: Observation, leader: MemberInfo) -> str | None:
    """The peer this candidate lets go first before it restarts to load copies, None when it is
    our turn. A peer has the turn while it does not stream (it is down to load its own copies:
    the agent stops PostgreSQL in one loop and starts it in the next, or it is reconnecting),
    or while it streams, lacks a copy and comes before us in name order. So at most one
    candidate is down for copies at a time and the last one streaming stays up, as long as each
    sees the others' keys within a loop. A peer down for another reason holds the turn too:
    its key cannot say whether it is coming back, so after COPY_TURN_PATIENCE seconds of
    waiting we go anyway (nothing we do keeps a broken peer up)."""
    view = obs.store
    if view is None or obs.copies_pending_for >= COPY_TURN_PATIENCE:
        return None
    wanted = frozenset(n for n, _ in leader.logical_slots) - frozenset(leader.native_slots)
    for name, m in sorted(view.members.items()):
        if name in (obs.me.name, leader.name) or m.tags.nofailover:
            continue
        if not m.streaming:
            return name
        if name < obs.me.name and not wanted <= {n for n, _ in m.logical_slots}:
            return name
    return None


def follower_slot_actions(obs: Observation, leader: MemberInfo, source: Upstream) -> tuple[list[Action], str]:
    """A streaming candidate keeps copies of the leader's logical slots: drop the untrusted,
    advance the rest, copy the missing (the copy needs a restart to load, taken in turns). On
    17 and later the slot-sync worker keeps the failover slots, and the copies are only of the
    others (made by a subscriber older than 17, which cannot ask for failover)."""
    r = _read(obs, leader)
    out, notes = list(r.out), list(r.notes)
    p = r.plan
    if p is None:
        return out, "; ".join(notes)
    if p.drop:
        out.append(DropLogicalSlots(p.drop))
    if p.advance:
        out.append(AdvanceLogicalSlots(p.advance))
    names = ", ".join(sorted(p.copy))
    why = _why_not_now(obs, leader, names) if p.copy else ""
    if why:
        notes.append(why)
    elif p.copy:
        # Copied only if our replay is past each slot's position (checked as it is read), then
        # loaded by a restart: PostgreSQL reads pg_replslot only when it starts.
        out += [CopyLogicalSlots(p.copy, source),
                StopPostgres("fast", "loading copied logical slots", restart=True)]
        notes.append(f"copying logical slots {names} from {source.name}")
    return out, "; ".join(notes)


def leader_slot_actions(obs: Observation, view: ClusterView) -> list[Action]:
    """17+ primary: the failover candidates streaming from us now, whose physical slots
    synchronized_standby_slots names (recomputed every loop, so on every membership change).
    A failover slot then sends a change only once each of them has flushed it, so none of
    them, once promoted, lacks a change a subscriber holds (rule 19). A candidate that stops
    streaming leaves the list at once: a subscriber waits for no one who cannot answer."""
    pg = obs.pg
    if pg.version is None or pg.version < FIRST_NATIVE or pg.logical is None:
        return []
    if not any(s.failover for s in pg.logical.slots.values()):
        return [SetStandbySlots(frozenset())]
    names = frozenset(r.name for r in pg.replication if r.state == "streaming"
                      and (m := view.members.get(r.name)) is not None and not m.tags.nofailover)
    return [SetStandbySlots(names)]


def missing_copies(view: ClusterView) -> dict[str, list[str]]:
    """Failover candidates lacking a copy of one of the leader's logical slots, as the members'
    keys show them: what `/status` and `ctl logical status` report."""
    leader = view.members.get(view.leader.name) if view.leader is not None else None
    if leader is None or not leader.logical_slots:
        return {}
    wanted = {n for n, _ in leader.logical_slots}
    out: dict[str, list[str]] = {}
    for name, m in sorted(view.members.items()):
        if name == leader.name or m.tags.nofailover:
            continue
        lacking = sorted(wanted - {n for n, _ in m.logical_slots})
        if lacking:
            out[name] = lacking
    return out
