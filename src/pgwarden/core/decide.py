"""The HA policy: one pure function from what this node observed to what it should do next.

`decide(obs)` reads no clock and does no I/O (SAFETY rule 14): `obs.now` is the time. The runner
(`pgwarden.agent`) builds the observation once per loop and executes the returned actions in
order, stopping at the first that fails. Ordering rules the actions below keep:

* hold the lease before promoting; renew it right after promoting (rule 4);
* fence (stop writes) before releasing the lease (switchover, lost health);
* demote before the lease deadline when renewals keep failing (rules 2, 3);
* never start a former primary as a primary without the lease (rules 5, 12);
* rewind a forked timeline before streaming (rule 11);
* the store's synchronous promise changes only in the order `sync.next_step` allows (rule 6).
"""

from __future__ import annotations

from dataclasses import replace

from pgwarden.core import candidates, failsafe, fast_path, logical, standby, sync
from pgwarden.core.actions import (
    Action,
    AdoptExistingData,
    ApplyLogical,
    ClearFailover,
    Clone,
    Decision,
    Demote,
    ExtendLease,
    Follow,
    HoldClients,
    Promote,
    PublishHistory,
    Reclone,
    ReleaseLease,
    RenewLease,
    Rewind,
    StartPostgres,
    StopPostgres,
    TakeInitLock,
    Upstream,
    WriteFailsafeMembers,
)
from pgwarden.core.commands import local_command
from pgwarden.core.leader_sync import leader_sync_actions
from pgwarden.core.leaderless import (
    HANDOVER_STOP_RESERVE,
    held_back,
    is_primary,
    leaderless,
    request_patience,
    take_over_crashed,
)
from pgwarden.core.model import (
    ClusterView,
    DataState,
    FailoverRequest,
    Lease,
    MemberInfo,
    Observation,
    PgView,
    Role,
)
from pgwarden.core.rewind import diverged, forked_on_one_timeline
from pgwarden.core.settings import FENCE_BUDGET, LEASE_MARGIN, ClusterSettings
from pgwarden.core.slot_copies import follower_slot_actions, leader_slot_actions
from pgwarden.core.slots import ensure_slots


def decide(obs: Observation) -> Decision:
    view = obs.store
    if view is None:
        return _store_unreachable(obs)
    if view.initialized is None:
        return _uninitialized(obs, view)
    pg = obs.pg
    if obs.command is not None:
        carried = local_command(obs, view)
        if carried is not None:
            return carried
    if pg.system_id and pg.system_id != view.initialized:
        stop: tuple[Action, ...] = ()
        if pg.running and pg.in_recovery is False:
            stop = (StopPostgres("fast", "data belongs to another cluster"),)
        return Decision(
            stop,
            f"data directory has system id {pg.system_id}, the cluster has {view.initialized}: "
            f"reinitialize this node (pgwarden ctl reinit {obs.me.name})",
        )
    if pg.data != DataState.VALID:
        return _needs_data(obs, view)
    if (guarded := standby.site_guard(obs, view)) is not None:  # rule 18
        return guarded
    if view.leader is not None and view.leader.name == obs.me.name:
        return _as_leader(obs, view)
    if view.leader is not None:
        return _as_follower(obs, view)
    return leaderless(obs, view)


# -- lease deadline ---------------------------------------------------------------------------


def stuck_after(settings: ClusterSettings) -> float:
    """How long a running replica may fail to stream before we suspect a forked timeline."""
    return max(30.0, 3 * settings.ttl)


def lease_running_out(obs: Observation, settings: ClusterSettings) -> bool:
    """Would the next loop start too late to stop writes before the lease deadline?"""
    return obs.now + settings.loop_wait >= obs.lease.deadline - FENCE_BUDGET


def _leader_must_demote(obs: Observation, settings: ClusterSettings) -> bool:
    """The leader reached the store this loop and will renew. Demote first only when the deadline
    is too close to count on that renewal, or when the lease is running out *and* the previous
    loop's renewal failed. A lease renewed last loop is always "running out" under a tight but
    valid timing (2 * loop_wait + margins >= ttl): demoting on that alone would make a healthy
    leader demote and re-promote (a new timeline) every other loop."""
    deadline = obs.lease.deadline
    if obs.now >= deadline - FENCE_BUDGET:
        return True
    # deadline = sent_at + ttl - LEASE_MARGIN; a renewal sent during the previous loop (which may
    # have run late by one slow call) leaves at least this much.
    renewed_last_loop = deadline >= obs.now + settings.ttl - LEASE_MARGIN - settings.loop_wait - \
        settings.retry_timeout
    return lease_running_out(obs, settings) and not renewed_last_loop


def _synchronous(view: ClusterView) -> bool:
    return view.settings.synchronous


def _store_unreachable(obs: Observation) -> Decision:
    if not is_primary(obs):
        return Decision((), "store unreachable; replica keeps streaming")
    # Rule 17: a majority confirmed; the deadline moves only if that still leaves time to stop.
    extended = failsafe.extended_deadline(obs)
    if extended is not None and extended > obs.lease.deadline and \
            not lease_running_out(replace(obs, lease=replace(obs.lease, deadline=extended)), obs.settings):
        return Decision((ExtendLease(extended),), f"store unreachable; failsafe: a majority confirms "
                        f"us, leading for {extended - obs.now:.1f}s more")
    if obs.lease.held and not lease_running_out(obs, obs.settings):
        left = obs.lease.deadline - obs.now
        return Decision((), f"store unreachable; still leading for {left:.1f}s unless a renewal succeeds")
    return Decision(
        (Demote(None, "store unreachable and the lease is running out"),),
        "store unreachable: demoting to read-only before the lease can expire",
    )


# -- bootstrap and data ------------------------------------------------------------------------


def _uninitialized(obs: Observation, view: ClusterView) -> Decision:
    pg = obs.pg
    if view.init_holder not in (None, obs.me.name):
        return Decision((), f"waiting for {view.init_holder} to initialise the cluster")
    take: tuple[Action, ...] = () if view.init_holder == obs.me.name else (TakeInitLock(),)
    if pg.data == DataState.VALID and pg.system_id:
        return Decision((*take, AdoptExistingData(pg.system_id)),
                        f"initialising the cluster from existing data {pg.system_id}")
    return Decision((*take, standby.bootstrap(obs.settings)), standby.bootstrap_message(obs.settings))


def _member_upstream(m: MemberInfo) -> Upstream:
    return Upstream(m.name, m.host, m.port)


def _leader_member(view: ClusterView) -> MemberInfo | None:
    if view.leader is None:
        return None
    return view.members.get(view.leader.name)


def _upstream_for(obs: Observation, view: ClusterView) -> Upstream | None:
    """The leader, or the member named by `replicatefrom` when it runs as a streaming replica."""
    src = obs.me.tags.replicatefrom
    if src and src != obs.me.name:
        m = view.members.get(src)
        if m is not None and m.running and m.role == Role.REPLICA and m.upstream != obs.me.name:
            return _member_upstream(m)
    leader = _leader_member(view)
    return _member_upstream(leader) if leader is not None else None


def _needs_data(obs: Observation, view: ClusterView) -> Decision:
    leader = _leader_member(view)
    if leader is None or not leader.running:
        return Decision((), "no data yet; waiting for a running leader to clone from")
    src = _upstream_for(obs, view)
    assert src is not None
    return Decision((Clone(src),), f"cloning from {src.name}")


# -- pausing ----------------------------------------------------------------------------------


# -- leader ------------------------------------------------------------------------------------


def _as_leader(obs: Observation, view: ClusterView) -> Decision:
    pg, settings = obs.pg, view.settings
    if not obs.lease.held:
        # The key names us: left by this agent's previous run (rule 5: take it back at once if
        # we can), or one we could not renew. A primary without the lease stops writes first,
        # except on that first look, when renewing is taking the lease at once.
        if obs.first_look and not view.failsafe_members:
            # (With the failsafe on, taking the lease back would skip rule 17's votes: below.)
            # Decide as the leader we were, behind a renewal: the actions stop at the first that
            # fails, so nothing after it runs unless the renewal succeeded (and set the deadline
            # the executor checks again before starting a primary).
            assumed = Lease(held=True, deadline=obs.now + settings.ttl - LEASE_MARGIN)
            d = _as_leader(replace(obs, lease=assumed, first_look=False), view)
            rest = tuple(a for a in d.actions if a != RenewLease())
            return Decision((RenewLease(), *rest), f"re-adopting our leader key after a restart; {d.message}")
        if is_primary(obs):
            return Decision((Demote(None, "leader key not renewable"),),
                            "our leader key could not be renewed: demoting first")
        if view.failsafe_members:
            # Rule 17: re-adopting would take the lease without the failsafe votes: let it expire.
            return Decision((), "our stale leader key must expire first (failsafe on)")
        return Decision((RenewLease(),), "re-adopting our leader key")
    if is_primary(obs) and _leader_must_demote(obs, settings):
        return Decision((Demote(None, "could not renew the lease in time"),),
                        "lease running out: demoting")
    if settings.standby_cluster is not None:
        return standby.as_standby_leader(obs, view, held_back(obs, settings))
    renew: tuple[Action, ...] = (RenewLease(),)
    if not pg.running:
        if held_back(obs, settings):
            return Decision(renew, "leader; PostgreSQL stopped (paused: not starting it)")
        if pg.was_primary is not True:
            # Rule 4: a standby becomes a primary only by promotion (a new timeline). Starting
            # it as a primary would fork history on its old timeline, invisible to pg_rewind.
            return Decision((*renew, StartPostgres("replica", None)),
                            "leader; starting PostgreSQL as a standby to promote it (it was one)")
        # Rule 12, sharpened: a crashed primary restarts as primary only under a lease that is
        # still ours (renewed first; the runner checks the deadline again just before starting).
        return Decision((*renew, StartPostgres("primary")), "leader; restarting PostgreSQL in place")
    if pg.in_recovery:
        after = sync.after_promotion_in(view, obs.me.name)
        return Decision((*renew, Promote(after, "the leader's standby promoted (after a restart or retry)")),
                        "holding the lease: promoting")
    if not pg.healthy:
        if pg.unhealthy_for > settings.ttl and not settings.paused:
            return Decision(
                (Demote(None, "PostgreSQL stopped answering"), ReleaseLease()),
                "PostgreSQL unhealthy too long: fencing it and releasing the lease",
            )
        return Decision(renew, f"leader; PostgreSQL not answering for {pg.unhealthy_for:.1f}s")

    handover = _switchover(obs, view)
    if handover is not None:
        return handover

    actions: list[Action] = list(renew)
    message = "leader, running as primary"
    if view.failover is not None and view.failover.candidate == obs.me.name:
        actions.append(ClearFailover())  # the switchover or failover to us is done
    if pg.timeline is not None and pg.timeline > 1 and \
            (not view.history or max(e.timeline for e in view.history) < pg.timeline - 1):
        actions.append(PublishHistory(pg.timeline))
    step_actions, waiting = leader_sync_actions(obs, view)
    actions.extend(step_actions)
    if waiting:
        message += f"; {waiting}"
    slots = frozenset(n for n in view.members if n != obs.me.name) | frozenset(settings.permanent_slots)
    actions.append(ensure_slots(obs, slots))
    members = failsafe.next_members(view, obs.me.name)
    if members is not None:
        actions.append(WriteFailsafeMembers(members, view.failsafe_token))
    actions.extend(leader_slot_actions(obs, view))
    if pg.logical is not None:
        changes, conflicts = logical.reconcile(settings.publications, settings.subscriptions, pg.logical)
        actions.extend(ApplyLogical(c) for c in changes)
        if conflicts:
            message += "; " + "; ".join(conflicts)
    return Decision(tuple(_dedup(actions)), message)


def _dedup(actions: list[Action]) -> list[Action]:
    out: list[Action] = []
    for a in actions:
        if a not in out:
            out.append(a)
    return out


def _switchover(obs: Observation, view: ClusterView) -> Decision | None:
    """A pending switchover (or failover naming another member) while we lead."""
    req = view.failover
    if req is None or req.candidate == obs.me.name:
        return None
    if req.leader not in (None, obs.me.name):
        return Decision((RenewLease(), ClearFailover()),
                        f"dropping a switchover request for former leader {req.leader}")
    if req.scheduled_at is not None and obs.wall < req.scheduled_at:
        return None
    target = _handover_target(obs, view, req)
    if target is None:
        # Keep leading; the request waits for a healthy candidate, but not for ever: an
        # operator's request carried out hours later, when the candidate happens to recover,
        # would be a surprise (and its `ctl` has long since reported a failure).
        due = obs.request_pending_for
        if req.scheduled_at is not None:
            due = min(due, obs.wall - req.scheduled_at)
        if due > request_patience(view.settings):
            who = req.candidate or "any replica"
            return Decision((RenewLease(), ClearFailover()),
                            f"dropping the {req.kind} request: {who} could not take over for {due:.0f}s")
        return None
    up = view.members.get(target)
    upstream = _member_upstream(up) if up is not None else None
    return Decision(
        (HoldClients(obs.lease.deadline - HANDOVER_STOP_RESERVE), Demote(upstream, f"switchover to {target}"),
         ReleaseLease()),
        f"switchover: stopping writes and handing over to {target}",
    )


def _handover_target(obs: Observation, view: ClusterView, req: FailoverRequest) -> str | None:
    # Rule 7: hand over only to a member allowed to promote under the store's synchronous set;
    # releasing the lease to any other leaves the cluster without a primary.
    cands = [c for c in candidates.peer_candidates(obs, view)
             if sync.may_take_over(c.name, view.sync, _synchronous(view))]
    if req.candidate is not None:
        return req.candidate if any(c.name == req.candidate for c in cands) else None
    b = candidates.best(cands)
    return b.name if b else None


# -- follower ----------------------------------------------------------------------------------


def _as_follower(obs: Observation, view: ClusterView) -> Decision:
    pg = obs.pg
    leader = _leader_member(view)
    upstream = _upstream_for(obs, view)
    assert view.leader is not None
    if is_primary(obs):
        return Decision((Demote(upstream, f"{view.leader.name} holds the lease"),),
                        f"running as primary while {view.leader.name} leads: demoting")
    if upstream is None or leader is None:
        return Decision((), f"following {view.leader.name}; waiting for it to publish its address")
    if obs.crash is not None and fast_path.refusal(obs, view) is None:
        taken = take_over_crashed(obs, view)
        if taken.actions:
            return taken
        # Not a candidate, or another is better: follow as usual (its own loop takes over).
    leader_tl = leader.timeline
    if not pg.running:
        if held_back(obs, view.settings):
            return Decision((), "paused: not starting PostgreSQL")
        lsn = pg.checkpoint_lsn
        leader_lsn = max(leader.lsn or 0, view.leader_lsn or 0) or None
        if leader.role == Role.PRIMARY and forked_on_one_timeline(pg.timeline, lsn, pg.was_primary,
                                                                 leader_tl, leader_lsn):
            src = _member_upstream(leader)
            return Decision((Reclone(src, "history forked on one timeline"),),
                            f"we were a primary on timeline {pg.timeline} and hold WAL past "
                            f"{leader.name}'s on that same timeline: re-cloning (pg_rewind cannot "
                            f"see a fork within one timeline)")
        # Repeated failed starts mean PostgreSQL itself refuses our history: let pg_rewind judge.
        if pg.start_failures >= 2 or diverged(pg.timeline, lsn, pg.was_primary, leader_tl, view.history):
            src = _member_upstream(leader)
            if not view.settings.use_pg_rewind or pg.rewind_failed:
                why = "pg_rewind failed" if pg.rewind_failed else "use_pg_rewind is off"
                return Decision((Reclone(src, why),), f"timeline forked and {why}: re-cloning")
            return Decision((Rewind(src), StartPostgres("replica", upstream)),
                            f"timeline forked from {leader.name}'s: rewinding")
        return Decision((StartPostgres("replica", upstream),), f"starting as a replica of {upstream.name}")
    if pg.in_recovery and _forked_while_running(pg, leader_tl, view):
        # Known from the leader's history: our WAL runs past the point where our timeline ended
        # (a former primary that demoted itself, say). No upstream can feed us: rewind now.
        src = _member_upstream(leader)
        steps = (StopPostgres("fast", "timeline forked"), Rewind(src), StartPostgres("replica", upstream))
        return Decision(steps, f"our WAL on timeline {pg.timeline} runs past where the leader's "
                               f"history ends it: rewinding")
    if pg.upstream != upstream.name:
        return Decision((Follow(upstream),), f"switching upstream to {upstream.name}")
    # A replica that cannot stream for long while its leader runs may hold WAL the leader lacks
    # (it was ahead of the new primary). Its reported timeline is unreliable while not streaming,
    # so let pg_rewind judge: it answers "no rewind required" cheaply when nothing forked.
    if pg.not_streaming_for > stuck_after(view.settings) and leader.running:
        src = _member_upstream(leader)
        steps = (StopPostgres("fast", "not streaming"), Rewind(src), StartPostgres("replica", upstream))
        return Decision(steps, f"not streaming for {pg.not_streaming_for:.0f}s: pg_rewind checks for a fork")
    state = "streaming" if pg.streaming else "not streaming yet"
    # Members cascading from us stream through a slot we keep (the leader keeps the others').
    cascading = frozenset(n for n, m in view.members.items()
                          if n != obs.me.name and m.tags.replicatefrom == obs.me.name)
    slot_steps, note = follower_slot_actions(obs, leader, _member_upstream(leader))
    keep = ensure_slots(obs, cascading)
    return Decision(((keep,) if keep.names or keep.retained else ()) + tuple(slot_steps),
                    f"replica of {upstream.name}, {state}" + (f"; {note}" if note else ""))


def _forked_while_running(pg: PgView, leader_tl: int | None, view: ClusterView) -> bool:
    """Only a fork the history proves (unknown_diverges=False): a running replica on an older
    timeline is normally just catching up through the switch."""
    if leader_tl is None or pg.timeline is None or pg.timeline >= leader_tl:
        return False
    lsn = max(pg.received_lsn or 0, pg.replayed_lsn or 0) or pg.lsn
    return diverged(pg.timeline, lsn, False, leader_tl, view.history, unknown_diverges=False)


# -- no leader ---------------------------------------------------------------------------------
