"""What a member does while the store shows no leader (rules 5, 9, 10 and the bounded waits):
a primary without the key takes it or demotes, a stopped server starts read-only to take part, a
pending switchover or failover is waited for as long as it can still come true, and otherwise
the best candidate takes the lease and promotes. Pure, like the rest of the core."""

from __future__ import annotations

from pgwarden.core import candidates, failsafe, fast_path, standby, sync
from pgwarden.core.actions import (
    AcquireLease,
    Action,
    ClearFailover,
    Decision,
    Demote,
    Promote,
    StartPostgres,
)
from pgwarden.core.model import ClusterView, Observation
from pgwarden.core.settings import ClusterSettings, FailoverMode


def is_primary(obs: Observation) -> bool:
    return obs.pg.running and obs.pg.in_recovery is False


def held_back(obs: Observation, settings: ClusterSettings) -> bool:
    """Paused: leave a stopped PostgreSQL stopped, unless we stopped it for a requested restart."""
    return settings.paused and not obs.restart_pending


def leaderless(obs: Observation, view: ClusterView) -> Decision:
    pg, settings = obs.pg, view.settings
    newest = candidates.latest_timeline(view)
    if is_primary(obs):
        if newest is not None and pg.timeline is not None and pg.timeline < newest:
            return Decision((Demote(None, "the cluster moved to a newer timeline"),),
                            f"primary on timeline {pg.timeline} but the cluster reached {newest}: demoting")
        req = view.failover
        if req is not None and req.leader == obs.me.name and req.kind == "switchover":
            return Decision((Demote(None, "switchover away from us in progress"),),
                            "switchover in progress: staying read-only")
        # Rule 5: a primary without the lease takes it at once or demotes.
        return Decision((AcquireLease(),), "primary without a leader key: taking the lease")
    if not pg.running:
        if held_back(obs, settings):
            return Decision((), "no leader; paused")
        return Decision((StartPostgres("replica", None),), "no leader; starting read-only to take part")
    req = view.failover
    manual = settings.paused or settings.failover_mode == FailoverMode.MANUAL
    stalled = _stalled(obs, settings)
    if req is not None:
        # Wait for a named candidate (or, for our own switchover, any replica) only while one
        # could take over: a request whose candidate is gone, forked, lagging or barred by the
        # synchronous set would otherwise leave the cluster without a primary until cleared.
        # And only for so long: a candidate that looks able but does not act (its agent hung,
        # its own checks refuse) must not leave the cluster without a primary either.
        able = {c.name for c in candidates.peer_candidates(obs, view)
                if sync.may_take_over(c.name, view.sync, view.settings.synchronous)}
        ours = req.leader == obs.me.name and req.kind == "switchover"
        if ours and not stalled:
            if (req.candidate in able) if req.candidate is not None else bool(able):
                return Decision((), f"switchover away from us: waiting for {req.candidate or 'a replica'}")
        elif req.candidate is not None and req.candidate != obs.me.name and not stalled:
            if req.candidate in able:
                return Decision((), f"no leader; {req.candidate} was asked to take over")
        elif req.candidate == obs.me.name:
            return _try_promote(obs, view, explicit=True)
        if ours and stalled:
            # Nobody took over from us: undo our half of the switchover (in manual mode too:
            # this is the operator's request failing, not an automatic failover).
            return _try_promote(obs, view, explicit=True, note=f"the switchover stalled for "
                                f"{obs.leaderless_for:.0f}s; taking the lease back")
    if manual:
        why = "paused" if settings.paused else "failover_mode is manual"
        return Decision((), f"no leader; not taking over ({why}); use pgwarden ctl failover")
    return _try_promote(obs, view, explicit=False)


# Seconds of the lease a switchover keeps for the demotion itself: pausing the pooler in front of
# us may use the lease only up to that point.
HANDOVER_STOP_RESERVE = 1.5

# How long a leader that still leads keeps a switchover it cannot carry out yet. Nothing is
# unavailable meanwhile, and right after a switchover every replica is still reconnecting (the old
# primary stops, maybe rewinds, starts and streams again): the leaderless `patience` (4 s at
# default timing) made a second switchover in a row fail for want of a ready replica. Shorter than
# `ctl switchover`'s wait (SWITCHOVER_TIMEOUT, 30 s), so the command still sees the drop and says so.
HANDOVER_PATIENCE = 25.0


def request_patience(settings: ClusterSettings) -> float:
    """How long the leader keeps a request no member can take over yet before dropping it."""
    return max(patience(settings), HANDOVER_PATIENCE)


def patience(settings: ClusterSettings) -> float:
    """How long a leaderless node waits for another to act (a better candidate, the one a request
    names) before it acts itself. The lease is atomic, so acting cannot make two primaries; it
    can only pick a less preferred one, which beats having none."""
    return max(settings.ttl, 3 * settings.loop_wait)


def _stalled(obs: Observation, settings: ClusterSettings) -> bool:
    return obs.leaderless_for > patience(settings)


def take_over_crashed(obs: Observation, view: ClusterView) -> Decision:
    """The leader's node is confirmed crashed (core/fast_path.py, rule 16): promote as after a
    lease expiry, every rule of `_try_promote` included, but take its key over at its version."""
    return _try_promote(obs, view, explicit=False, crashed=True)


def _try_promote(obs: Observation, view: ClusterView, explicit: bool, note: str = "",
                 crashed: bool = False) -> Decision:
    pg = obs.pg
    my_lsn = max(pg.received_lsn or 0, pg.replayed_lsn or 0) or pg.lsn
    reason = candidates.eligibility(obs.me.tags, pg.healthy, pg.in_recovery, my_lsn, pg.timeline, view)
    if reason is not None:  # rule 9 holds for operator-requested failovers too
        return Decision((), f"no leader; not a candidate: {reason}")
    voters = {n: (max(r.received_lsn or 0, r.replayed_lsn or 0) or r.lsn)
              for n, r in obs.peers.items() if r.reachable}
    ok, why = sync.may_promote_stored(obs.me.name, view.sync, view.settings.synchronous, my_lsn, voters)
    if not ok:
        return Decision((), f"no leader; may not promote under the synchronous promise: {why}")
    if (bound := failsafe.candidate_refusal(obs, view)) is not None:
        return Decision((), f"no leader; may not take the lease: {bound}")
    assert my_lsn is not None
    me = candidates.Candidate(obs.me.name, obs.me.tags.failover_priority, my_lsn, pg.timeline,
                              candidates.slot_count(view, obs.me.name))
    stalled = _stalled(obs, view.settings)  # never while a leader key exists (the crashed case)
    if not explicit and not stalled:
        # Rule 10 compares with peers that could win: one barred by the synchronous set would
        # never promote, and waiting for it would leave the cluster without a primary.
        others = [c for c in candidates.peer_candidates(obs, view)
                  if sync.may_take_over(c.name, view.sync, view.settings.synchronous)]
        top = candidates.best([me, *others])
        if top is not None and top.name != obs.me.name:
            return Decision((), f"no leader; {top.name} is the better candidate, waiting for it")
    req = view.failover
    after = sync.after_promotion_in(view, obs.me.name)
    if crashed:
        assert view.leader is not None and view.sync is not None
        why = f"automatic failover: {fast_path.describe(obs)} (fast path, before the lease ran out)"
        take = AcquireLease(failsafe.acquire_not_after(obs, view), over=view.leader.token,
                            sync_token=view.sync.token)
        return Decision((take, Promote(after, why)),
                        f"{fast_path.describe(obs)}: taking over its key without waiting for the lease")
    if note:
        why = "a stalled switchover: the old leader took its lease back"
    elif explicit and req is not None:
        why = f"switchover from {req.leader}" if req.kind == "switchover" else "failover by an operator"
    else:
        why = "automatic failover: the leader's lease ran out"
    steps: tuple[Action, ...] = (AcquireLease(failsafe.acquire_not_after(obs, view)), Promote(after, why))
    steps = standby.without_promotion(view.settings, steps)  # a standby site: lease, no promotion
    message = note or f"no leader; taking the lease{standby.promoting(view.settings)}"
    if view.failover is not None and view.failover.candidate != obs.me.name:
        # We act on our own after a request that did not come true: drop it, or the new leader
        # would try to carry it out again.
        steps = (*steps, ClearFailover())
        if not note:
            message += f" (no one acted on the pending {view.failover.kind} for {obs.leaderless_for:.0f}s)"
    elif stalled and not explicit:
        message += f" (leaderless for {obs.leaderless_for:.0f}s)"
    return Decision(steps, message)
