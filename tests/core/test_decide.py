"""One test (or a few) per branch of `decide`: each states the SAFETY rule it guards."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from pgwarden.config.schema import FENCE_BUDGET, LEASE_MARGIN, ClusterSettings, FailoverMode, SyncMode
from pgwarden.core.actions import (
    AcquireLease,
    AdoptExistingData,
    ApplySync,
    Bootstrap,
    ClearFailover,
    Clone,
    Demote,
    EnsureSlots,
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
    WriteSyncState,
)
from pgwarden.core.decide import HANDOVER_STOP_RESERVE, decide, patience, request_patience, stuck_after
from pgwarden.core.model import ClusterView, DataState, PeerReading, PgView, Role, SyncState

from .builders import (
    NOW,
    WALL,
    empty_pg,
    history,
    kinds,
    leader_obs,
    member,
    obs,
    peer,
    peers,
    primary_pg,
    replica_pg,
    settings,
    stat,
    stopped_pg,
    switchover,
    sync_config,
    sync_state,
    view,
)

UP_N1 = Upstream("n1", "n1.local", 5432)
UP_N2 = Upstream("n2", "n2.local", 5432)
UP_N3 = Upstream("n3", "n3.local", 5432)


# -- store unreachable (rules 2, 3) ----------------------------------------------------------


def test_store_unreachable_primary_keeps_leading_while_lease_lasts() -> None:
    s = settings()
    deadline = NOW + s.loop_wait + FENCE_BUDGET + 0.01
    d = decide(obs("n1", primary_pg(), held=True, deadline=deadline, unreachable=True, cluster=s))
    assert d.actions == ()


@pytest.mark.parametrize("slack", [0.0, -0.01, -5.0])
def test_store_unreachable_primary_demotes_when_next_loop_would_be_too_late(slack: float) -> None:
    s = settings()
    deadline = NOW + s.loop_wait + FENCE_BUDGET + slack
    d = decide(obs("n1", primary_pg(), held=True, deadline=deadline, unreachable=True, cluster=s))
    assert kinds(d.actions) == ["Demote"]
    assert isinstance(d.actions[0], Demote)


def test_store_unreachable_uses_last_known_loop_wait() -> None:
    slow = settings(ttl=30, loop_wait=10)
    deadline = NOW + 5.0  # plenty with loop_wait=1, too little with 10
    d = decide(obs("n1", primary_pg(), held=True, deadline=deadline, unreachable=True, cluster=slow))
    assert kinds(d.actions) == ["Demote"]


def test_store_unreachable_primary_without_lease_demotes() -> None:
    d = decide(obs("n1", primary_pg(), held=False, unreachable=True))
    assert kinds(d.actions) == ["Demote"]


def test_store_unreachable_replica_does_nothing() -> None:
    d = decide(obs("n2", replica_pg(), unreachable=True))
    assert d.actions == ()
    d = decide(obs("n2", stopped_pg(), unreachable=True))
    assert d.actions == ()


# -- bootstrap -------------------------------------------------------------------------------


def test_uninitialized_empty_takes_init_lock_then_bootstraps() -> None:
    v = view(None, [], initialized=None)
    d = decide(obs("n1", empty_pg(), v))
    assert d.actions == (TakeInitLock(), Bootstrap())


def test_uninitialized_holder_bootstraps_without_retaking_lock() -> None:
    v = view(None, [], initialized=None, init_holder="n1")
    assert decide(obs("n1", empty_pg(), v)).actions == (Bootstrap(),)


def test_uninitialized_other_holder_waits() -> None:
    v = view(None, [], initialized=None, init_holder="n2")
    assert decide(obs("n1", empty_pg(), v)).actions == ()


def test_uninitialized_with_existing_data_adopts_it() -> None:
    v = view(None, [], initialized=None)
    d = decide(obs("n1", stopped_pg(system_id="42"), v))
    assert d.actions == (TakeInitLock(), AdoptExistingData("42"))


def test_foreign_system_id_stops_a_primary_and_does_nothing_else() -> None:
    d = decide(obs("n2", primary_pg(system_id="other"), view("n1")))
    assert kinds(d.actions) == ["StopPostgres"]
    d = decide(obs("n2", replica_pg(system_id="other"), view("n1")))
    assert d.actions == ()


def test_empty_data_clones_from_running_leader() -> None:
    d = decide(obs("n2", empty_pg(), view("n1")))
    assert d.actions == (Clone(UP_N1),)


def test_broken_data_clones_too() -> None:
    d = decide(obs("n2", replace_data(DataState.BROKEN), view("n1")))
    assert d.actions == (Clone(UP_N1),)


def replace_data(state: DataState) -> PgView:
    return PgView(data=state)


def test_empty_data_waits_without_running_leader() -> None:
    v = view("n1", [member("n1", Role.PRIMARY, running=False), member("n2")])
    assert decide(obs("n2", empty_pg(), v)).actions == ()
    assert decide(obs("n2", empty_pg(), view(None))).actions == ()


def test_clone_from_replicatefrom_when_it_streams() -> None:
    d = decide(obs("n3", empty_pg(), view("n1"), tags={"replicatefrom": "n2"}))
    assert d.actions == (Clone(UP_N2),)


# -- leader ----------------------------------------------------------------------------------


def test_leader_renews_and_keeps_slots() -> None:
    d = decide(leader_obs())
    assert d.actions[0] == RenewLease()
    assert EnsureSlots(frozenset({"n2", "n3"})) in d.actions
    assert not any(isinstance(a, (Demote, ReleaseLease, Promote)) for a in d.actions)


def test_leader_key_not_renewable_primary_demotes_first() -> None:
    d = decide(obs("n1", primary_pg(), view("n1"), held=False))
    assert kinds(d.actions) == ["Demote"]


def test_leader_key_not_held_replica_readopts() -> None:
    d = decide(obs("n1", replica_pg(None), view("n1"), held=False))
    assert d.actions == (RenewLease(),)


def test_leader_lease_running_out_demotes() -> None:
    """Renewals failed for a while although the store answers reads: demote while there is time."""
    s = settings()
    d = decide(leader_obs(deadline=NOW + s.loop_wait + FENCE_BUDGET - 0.01))
    assert kinds(d.actions) == ["Demote"]


def test_leader_past_fence_point_demotes() -> None:
    d = decide(leader_obs(deadline=NOW + FENCE_BUDGET))
    assert kinds(d.actions) == ["Demote"]


@pytest.mark.parametrize(("ttl", "loop_wait", "retry_timeout"), [
    (4, 1, 1), (3, 1, 1), (30, 10, 10), (2, 0.6, 0.5), (2, 0.25, 0.5), (21, 10, 5),
])
def test_leader_renewed_last_loop_never_demotes_under_valid_timing(
    ttl: float, loop_wait: float, retry_timeout: float
) -> None:
    """A healthy leader whose renewal succeeded one loop ago (even a loop made late by one slow
    call) keeps leading whatever valid timing the cluster uses; otherwise it demotes and
    re-promotes every other loop."""
    s = settings(ttl=ttl, loop_wait=loop_wait, retry_timeout=retry_timeout)
    v = view("n1", cluster=s)
    for late in (0.0, retry_timeout * 0.5):
        deadline = NOW - loop_wait - late + ttl - LEASE_MARGIN
        if deadline - FENCE_BUDGET <= NOW:
            continue  # the lease is over before the next loop: no leader can work with this timing
        d = decide(leader_obs(store=v, deadline=deadline))
        assert d.actions[0] == RenewLease(), (ttl, loop_wait, retry_timeout, late, d)


def test_leader_renewed_one_loop_ago_keeps_leading_with_default_timing() -> None:
    s = settings()
    # renewal sent at the start of the previous loop
    d = decide(leader_obs(deadline=NOW - s.loop_wait + s.ttl - LEASE_MARGIN))
    assert d.actions[0] == RenewLease()


def test_leader_restarts_crashed_postgres_in_place() -> None:
    d = decide(leader_obs(stopped_pg(was_primary=True)))
    assert d.actions == (RenewLease(), StartPostgres("primary"))


def test_leader_paused_does_not_start_postgres() -> None:
    v = view("n1", cluster=settings(paused=True))
    d = decide(leader_obs(stopped_pg(), v))
    assert d.actions == (RenewLease(),)


def test_leader_in_recovery_promotes_after_renewing() -> None:
    d = decide(leader_obs(replica_pg(None)))
    assert d.actions == (RenewLease(), Promote())


def test_leader_unhealthy_briefly_keeps_renewing() -> None:
    s = settings()
    d = decide(leader_obs(primary_pg(healthy=False, unhealthy_for=s.ttl - 0.1)))
    assert d.actions == (RenewLease(),)


def test_leader_unhealthy_longer_than_ttl_fences_then_releases() -> None:
    s = settings()
    d = decide(leader_obs(primary_pg(healthy=False, unhealthy_for=s.ttl + 0.1)))
    assert kinds(d.actions) == ["Demote", "ReleaseLease"]


def test_leader_unhealthy_paused_never_fences() -> None:
    v = view("n1", cluster=settings(paused=True))
    d = decide(leader_obs(primary_pg(healthy=False, unhealthy_for=100), v))
    assert d.actions == (RenewLease(),)


def test_leader_publishes_missing_history() -> None:
    d = decide(leader_obs(primary_pg(timeline=3), view("n1", hist=history((1, 500)))))
    assert PublishHistory(3) in d.actions
    d = decide(leader_obs(primary_pg(timeline=3), view("n1", hist=history((1, 500), (2, 800)))))
    assert not any(isinstance(a, PublishHistory) for a in d.actions)


def test_new_leader_clears_failover_naming_it() -> None:
    v = view("n2", [member("n1"), member("n2", Role.PRIMARY)], failover=switchover("n1", "n2"))
    d = decide(obs("n2", primary_pg(), v, held=True))
    assert ClearFailover() in d.actions
    assert d.actions[0] == RenewLease()


# -- leader: synchronous replication ---------------------------------------------------------


def test_leader_in_sync_mode_adds_standby_to_pg_first() -> None:
    v = view("n1", cluster=settings(synchronous_mode=SyncMode.ON))
    pg = primary_pg(replication=(stat("n2", 1000), stat("n3", 900)))
    d = decide(leader_obs(pg, v))
    assert ApplySync(sync_config(1, "n2")) in d.actions
    assert not any(isinstance(a, WriteSyncState) for a in d.actions)


def test_leader_in_sync_mode_writes_store_after_confirmation() -> None:
    v = view("n1", cluster=settings(synchronous_mode=SyncMode.ON))
    pg = primary_pg(replication=(stat("n2", 1000),), sync=sync_config(1, "n2"), sync_applied_lsn=1000)
    d = decide(leader_obs(pg, v))
    writes = [a for a in d.actions if isinstance(a, WriteSyncState)]
    assert writes and writes[0].state.members == frozenset({"n2"}) and writes[0].state.leader == "n1"


def test_leader_with_sync_off_touches_nothing() -> None:
    d = decide(leader_obs(primary_pg(replication=(stat("n2", 1000),))))
    assert not any(isinstance(a, (ApplySync, WriteSyncState)) for a in d.actions)


# -- switchover ------------------------------------------------------------------------------


def so_view(candidate: str | None = "n2", at: float | None = None, **kw: Any) -> ClusterView:
    return view("n1", failover=switchover("n1", candidate, at), **kw)


HOLD = HoldClients(NOW + settings().ttl - LEASE_MARGIN - HANDOVER_STOP_RESERVE)


def test_switchover_holds_clients_demotes_then_releases() -> None:
    """The pooler is paused only up to where the demotion still fits inside the lease."""
    d = decide(leader_obs(store=so_view(), ps=peers(peer("n2"), peer("n3"))))
    assert d.actions == (HOLD, Demote(UP_N2, "switchover to n2"), ReleaseLease())


def test_switchover_waits_for_scheduled_time() -> None:
    d = decide(leader_obs(store=so_view(at=WALL + 60), ps=peers(peer("n2"))))
    assert not any(isinstance(a, (Demote, ReleaseLease)) for a in d.actions)
    d = decide(leader_obs(store=so_view(at=WALL - 1), ps=peers(peer("n2"))))
    assert kinds(d.actions) == ["HoldClients", "Demote", "ReleaseLease"]


@pytest.mark.parametrize("reading", [
    peer("n2", reachable=False),
    peer("n2", running=False),
    peer("n2", role=Role.PRIMARY),
    peer("n2", lsn=None),
    peer("n2", timeline=0),
])
def test_switchover_needs_a_healthy_reachable_candidate(reading: PeerReading) -> None:
    v = so_view(hist=history((0, 10)))
    d = decide(leader_obs(store=v, ps={"n2": reading}))
    assert not any(isinstance(a, (Demote, ReleaseLease)) for a in d.actions)
    assert d.actions[0] == RenewLease()


def test_switchover_candidate_missing_from_readings_waits() -> None:
    d = decide(leader_obs(store=so_view(), ps=peers(peer("n3"))))
    assert not any(isinstance(a, Demote) for a in d.actions)


def test_switchover_without_candidate_picks_best_replica() -> None:
    d = decide(leader_obs(store=so_view(None), ps=peers(peer("n2", 900), peer("n3", 1000))))
    assert d.actions == (HOLD, Demote(UP_N3, "switchover to n3"), ReleaseLease())


def test_switchover_in_sync_mode_only_to_a_synchronous_standby() -> None:
    v = view("n1", failover=switchover("n1", None), cluster=settings(synchronous_mode=SyncMode.ON),
             sync=sync_state("n1", "n2"))
    pg = primary_pg(sync=sync_config(1, "n2"), replication=(stat("n2", 1000), stat("n3", 1000)))
    d = decide(leader_obs(pg, v, ps=peers(peer("n2", 900), peer("n3", 1000))))
    assert d.actions[1] == Demote(UP_N2, "switchover to n2")


def test_switchover_to_named_non_sync_candidate_never_hands_over() -> None:
    """Rule 7: n3 may not promote in `on` mode (not in the sync set), so handing it the lease would
    leave the cluster leaderless and read-only."""
    v = view("n1", failover=switchover("n1", "n3"), cluster=settings(synchronous_mode=SyncMode.ON),
             sync=sync_state("n1", "n2"))
    pg = primary_pg(sync=sync_config(1, "n2"), replication=(stat("n2", 1000), stat("n3", 1000)))
    d = decide(leader_obs(pg, v, ps=peers(peer("n2"), peer("n3"))))
    assert not any(isinstance(a, (Demote, ReleaseLease)) for a in d.actions)


def test_a_request_the_leader_cannot_carry_out_is_dropped_after_the_patience_bound() -> None:
    """n2 is unreachable: the leader keeps leading and the request waits, then is dropped, so it
    cannot fire hours later when n2 recovers. A scheduled one counts from its time."""
    ttl = request_patience(so_view().settings)
    assert ttl > patience(so_view().settings)  # a replica still reconnecting gets its chance
    o = leader_obs(store=so_view(), ps=peers(peer("n2", reachable=False)))
    d = decide(dataclasses.replace(o, request_pending_for=ttl - 0.1))
    assert ClearFailover() not in d.actions and d.actions[0] == RenewLease()
    d = decide(dataclasses.replace(o, request_pending_for=ttl + 0.1))
    assert d.actions == (RenewLease(), ClearFailover()) and "could not take over" in d.message
    o = leader_obs(store=so_view(at=WALL - 1), ps=peers(peer("n2", reachable=False)))
    assert ClearFailover() not in decide(dataclasses.replace(o, request_pending_for=3600)).actions
    o = leader_obs(store=so_view(at=WALL - ttl - 1), ps=peers(peer("n2", reachable=False)))
    assert decide(dataclasses.replace(o, request_pending_for=3600)).actions == (RenewLease(), ClearFailover())


def test_switchover_for_another_former_leader_is_dropped() -> None:
    v = view("n1", failover=switchover("n9", "n2"))
    d = decide(leader_obs(store=v, ps=peers(peer("n2"))))
    assert d.actions == (RenewLease(), ClearFailover())


def test_old_leader_does_not_retake_lease_while_its_switchover_is_pending() -> None:
    v = view(None, [member("n1"), member("n2"), member("n3")], failover=switchover("n1", "n2"))
    # still primary (demote failed half-way): stays read-only
    d = decide(obs("n1", primary_pg(), v, ps=peers(peer("n2"), peer("n3"))))
    assert kinds(d.actions) == ["Demote"]
    # already a replica, the best by LSN: still waits
    d = decide(obs("n1", replica_pg(None, lsn=5000, received_lsn=5000, replayed_lsn=5000), v,
                   ps=peers(peer("n2"), peer("n3"))))
    assert d.actions == ()


def test_old_leader_stops_waiting_when_its_candidate_cannot_take_over() -> None:
    """Liveness: the switchover's candidate forked (older timeline) after n1 had to give up the
    lease for another reason. Waiting for it would leave the cluster without a primary."""
    v = view(None, [member("n1"), member("n2"), member("n3")], failover=switchover("n1", "n2"),
             hist=history((1, 500)))
    me_pg = replica_pg(None, timeline=2)
    d = decide(obs("n1", me_pg, v, ps=peers(peer("n2", timeline=1), peer("n3", 900, timeline=2))))
    # ... and drops the request it gave up on, or as leader it would try to carry it out again.
    assert d.actions == (AcquireLease(), Promote(), ClearFailover())


def test_replicas_stop_waiting_for_an_unreachable_or_gone_candidate() -> None:
    for ms, ps in [
        ([member("n1"), member("n3")], peers(peer("n1", 900), peer("n2"))),  # n2's member key expired
        ([member("n1"), member("n2"), member("n3")], peers(peer("n1", 900), peer("n2", reachable=False))),
    ]:
        v = view(None, ms, failover=switchover(None, "n2", kind="failover"))
        d = decide(obs("n3", replica_pg(None), v, ps=ps))
        assert d.actions == (AcquireLease(), Promote(), ClearFailover()), d


def test_peer_without_member_key_does_not_block_rule_10() -> None:
    """A better peer whose member key expired cannot reach the store, so it cannot win."""
    v = view(None, [member("n2"), member("n3")])
    d = decide(obs("n2", replica_pg(None), v, ps=peers(peer("n1", 5000), peer("n3", 900))))
    assert d.actions == (AcquireLease(), Promote())


def test_named_candidate_takes_over_even_when_not_the_best() -> None:
    v = view(None, [member("n1"), member("n2"), member("n3")], failover=switchover("n1", "n2"))
    d = decide(obs("n2", replica_pg(None, lsn=900, received_lsn=900, replayed_lsn=900), v,
                   ps=peers(peer("n1", 1000), peer("n3", 1000))))
    assert d.actions == (AcquireLease(), Promote())


def test_other_replicas_wait_for_the_named_candidate() -> None:
    v = view(None, [member("n1"), member("n2"), member("n3")], failover=switchover("n1", "n2"))
    d = decide(obs("n3", replica_pg(None, lsn=2000, received_lsn=2000, replayed_lsn=2000), v,
                   ps=peers(peer("n1"), peer("n2"))))
    assert d.actions == ()


def test_the_departing_leader_of_a_switchover_is_no_candidate() -> None:
    """n1 demoted for a switchover with no candidate; its WAL is the newest and its name sorts
    first, yet n2 must not wait for it (n1 waits for a replica: they would wait for each other)."""
    v = view(None, [member("n1"), member("n2"), member("n3")], failover=switchover("n1", None))
    d = decide(obs("n2", replica_pg(None, lsn=1000, received_lsn=1000, replayed_lsn=1000), v,
                   ps=peers(peer("n1", 1200), peer("n3", 1000))))
    assert d.actions == (AcquireLease(), Promote(), ClearFailover())
    d = decide(obs("n1", replica_pg(None, lsn=1200, received_lsn=None, replayed_lsn=1200), v,
                   ps=peers(peer("n2", 1000), peer("n3", 1000))))
    assert d.actions == () and "waiting for a replica" in d.message


def test_rule_10_waits_for_a_better_peer_only_within_the_patience_bound() -> None:
    v = view(None, [member("n2"), member("n3")])
    o = obs("n3", replica_pg(None, lsn=900, received_lsn=900, replayed_lsn=900), v,
            ps=peers(peer("n2", 1000)))
    assert decide(o).actions == ()
    ttl = v.settings.ttl
    assert decide(dataclasses.replace(o, leaderless_for=ttl - 0.1)).actions == ()
    late = decide(dataclasses.replace(o, leaderless_for=ttl + 0.1))
    assert late.actions == (AcquireLease(), Promote()) and "leaderless for" in late.message


@pytest.mark.parametrize("cluster", [settings(), settings(failover_mode=FailoverMode.MANUAL)])
def test_a_stalled_switchover_gives_the_lease_back_to_the_old_leader(cluster: ClusterSettings) -> None:
    """n2 was named and looks able, but nobody took the lease within the patience bound: n1
    undoes its half of the switchover (also in manual mode: the request failed, no automatic
    failover happens) and drops the request."""
    v = view(None, [member("n1"), member("n2"), member("n3")], failover=switchover("n1", "n2"),
             cluster=cluster)
    o = obs("n1", replica_pg(None, lsn=1200, received_lsn=None, replayed_lsn=1200), v,
            ps=peers(peer("n2", 1200), peer("n3", 1200)), cluster=cluster)
    assert decide(o).actions == ()
    d = decide(dataclasses.replace(o, leaderless_for=cluster.ttl + 1))
    assert d.actions == (AcquireLease(), Promote(), ClearFailover()) and "stalled" in d.message
    # n3, not named, also stops waiting in automatic mode, never in manual mode.
    o3 = obs("n3", replica_pg(None, lsn=1200, received_lsn=1200, replayed_lsn=1200), v,
             ps=peers(peer("n1", 1200), peer("n2", 1200)), cluster=cluster)
    d3 = decide(dataclasses.replace(o3, leaderless_for=cluster.ttl + 1))
    if cluster.failover_mode == FailoverMode.MANUAL:
        assert d3.actions == ()
    else:
        assert d3.actions == (AcquireLease(), Promote(), ClearFailover())


# -- follower --------------------------------------------------------------------------------


def test_follower_demotes_a_primary_that_is_not_the_leader() -> None:
    d = decide(obs("n2", primary_pg(), view("n1")))
    assert d.actions == (Demote(UP_N1, "n1 holds the lease"),)


def test_follower_starts_as_replica() -> None:
    d = decide(obs("n2", stopped_pg(), view("n1")))
    assert d.actions == (StartPostgres("replica", UP_N1),)


def test_follower_paused_does_not_start() -> None:
    d = decide(obs("n2", stopped_pg(), view("n1", cluster=settings(paused=True))))
    assert d.actions == ()


def test_follower_switches_upstream() -> None:
    d = decide(obs("n2", replica_pg("n3"), view("n1")))
    assert d.actions == (Follow(UP_N1),)


def test_follower_streaming_does_nothing() -> None:
    assert decide(obs("n2", replica_pg("n1"), view("n1"))).actions == ()


def test_follower_uses_replicatefrom() -> None:
    d = decide(obs("n3", replica_pg("n1"), view("n1"), tags={"replicatefrom": "n2"}))
    assert d.actions == (Follow(UP_N2),)


def test_follower_replicatefrom_not_a_cycle() -> None:
    v = view("n1", [member("n1", Role.PRIMARY), member("n2", upstream="n3"), member("n3")])
    d = decide(obs("n3", replica_pg("n1"), v, tags={"replicatefrom": "n2"}))
    assert d.actions == ()


def leader_on_tl2(**kw: Any) -> ClusterView:
    return view("n2", [member("n1"), member("n2", Role.PRIMARY, timeline=2)], hist=history((1, 800)), **kw)


def test_former_primary_rewinds_before_streaming() -> None:
    v = leader_on_tl2()
    d = decide(obs("n1", stopped_pg(was_primary=True, checkpoint_lsn=700), v))
    assert d.actions == (Rewind(UP_N2), StartPostgres("replica", UP_N2))


def test_forked_replica_reclones_when_pg_rewind_is_off() -> None:
    v = leader_on_tl2(cluster=settings(use_pg_rewind=False))
    d = decide(obs("n1", stopped_pg(was_primary=True), v))
    assert kinds(d.actions) == ["Reclone"]
    assert isinstance(d.actions[0], Reclone) and d.actions[0].source == UP_N2


def test_forked_replica_reclones_after_failed_rewind() -> None:
    v = leader_on_tl2()
    d = decide(obs("n1", stopped_pg(was_primary=True, rewind_failed=True), v))
    assert kinds(d.actions) == ["Reclone"]


def test_replica_behind_switch_point_starts_without_rewind() -> None:
    v = leader_on_tl2()
    d = decide(obs("n1", stopped_pg(was_primary=False, checkpoint_lsn=700), v))
    assert d.actions == (StartPostgres("replica", UP_N2),)


def test_replica_not_streaming_for_long_is_rewound() -> None:
    """Rule 11: a running replica that cannot stream for long may have forked; pg_rewind decides."""
    v = leader_on_tl2()
    stuck = stuck_after(v.settings)
    # At 700 it may be on the leader's history (timeline 1 ended at 800): only time tells.
    at = {"lsn": 700, "received_lsn": 700, "replayed_lsn": 700}
    pg = replica_pg("n2", streaming=False, not_streaming_for=stuck + 0.1, **at)
    d = decide(obs("n1", pg, v))
    assert d.actions == (StopPostgres("fast", "not streaming"), Rewind(UP_N2),
                         StartPostgres("replica", UP_N2))
    pg = replica_pg("n2", streaming=False, not_streaming_for=stuck - 0.1, **at)
    assert decide(obs("n1", pg, v)).actions == ()


def test_running_replica_past_its_timelines_end_rewinds_at_once() -> None:
    """A former primary that demoted itself (store lost) and restarted as a replica: the
    leader's history ends timeline 1 at 800, its WAL reaches 1000. Its WAL receiver keeps
    connecting (each retry looks like streaming for a moment); waiting would never end."""
    v = leader_on_tl2()
    pg = replica_pg("n2", streaming=True, not_streaming_for=0.0)  # lsn 1000, timeline 1
    d = decide(obs("n1", pg, v))
    assert d.actions == (StopPostgres("fast", "timeline forked"), Rewind(UP_N2),
                         StartPostgres("replica", UP_N2))
    # Exactly at the switch point, or on the leader's timeline, nothing forked.
    for kw in ({"lsn": 800, "received_lsn": 800, "replayed_lsn": 800}, {"timeline": 2}):
        pg = replica_pg("n2", streaming=True, **kw)
        assert decide(obs("n1", pg, v)).actions == ()
    # Without the history entry the fork is not proven: no rewind of a running replica.
    v = view("n2", [member("n1"), member("n2", Role.PRIMARY, timeline=2)])
    assert decide(obs("n1", replica_pg("n2", streaming=True), v)).actions == ()


# -- leaderless ------------------------------------------------------------------------------


def lv(**kw: Any) -> ClusterView:
    return view(None, [member("n1"), member("n2"), member("n3")], **kw)


def test_leaderless_primary_takes_the_lease() -> None:
    d = decide(obs("n1", primary_pg(), lv()))
    assert d.actions == (AcquireLease(),)


def test_leaderless_primary_on_old_timeline_demotes() -> None:
    d = decide(obs("n1", primary_pg(timeline=1), lv(hist=history((1, 800)))))
    assert kinds(d.actions) == ["Demote"]


def test_leaderless_stopped_starts_as_replica_never_primary() -> None:
    d = decide(obs("n1", stopped_pg(was_primary=True), lv()))
    assert d.actions == (StartPostgres("replica", None),)


def test_leaderless_best_replica_promotes() -> None:
    d = decide(obs("n2", replica_pg(None, lsn=1000), lv(), ps=peers(peer("n3", 900))))
    assert d.actions == (AcquireLease(), Promote())


def test_leaderless_replica_with_better_peer_waits() -> None:
    d = decide(obs("n2", replica_pg(None), lv(), ps=peers(peer("n3", 1001))))
    assert d.actions == ()


def test_leaderless_priority_beats_lsn() -> None:
    v = view(None, [member("n1"), member("n2", tags={"failover_priority": 2}), member("n3")])
    d = decide(obs("n2", replica_pg(None, lsn=900, received_lsn=900, replayed_lsn=900), v,
                   tags={"failover_priority": 2}, ps=peers(peer("n3", 1000))))
    assert d.actions == (AcquireLease(), Promote())
    d = decide(obs("n3", replica_pg(None), v, ps=peers(peer("n2", 900))))
    assert d.actions == ()


def test_leaderless_tie_broken_by_name() -> None:
    assert decide(obs("n2", replica_pg(None), lv(), ps=peers(peer("n3")))).actions != ()
    assert decide(obs("n3", replica_pg(None), lv(), ps=peers(peer("n2")))).actions == ()


def test_leaderless_unreachable_better_peer_does_not_block() -> None:
    d = decide(obs("n2", replica_pg(None), lv(), ps=peers(peer("n3", 2000, reachable=False))))
    assert d.actions == (AcquireLease(), Promote())


def test_leaderless_nofailover_never_promotes() -> None:
    d = decide(obs("n2", replica_pg(None), lv(), tags={"nofailover": True}))
    assert d.actions == ()


def test_leaderless_nofailover_peer_does_not_block() -> None:
    v = view(None, [member("n1"), member("n2"), member("n3", tags={"nofailover": True})])
    d = decide(obs("n2", replica_pg(None), v, ps=peers(peer("n3", 5000))))
    assert d.actions == (AcquireLease(), Promote())


def test_leaderless_lagging_replica_never_promotes() -> None:
    lim = settings().maximum_lag_on_failover
    d = decide(obs("n2", replica_pg(None), lv(leader_lsn=1000 + lim + 1)))
    assert d.actions == ()
    d = decide(obs("n2", replica_pg(None), lv(leader_lsn=1000 + lim)))
    assert d.actions == (AcquireLease(), Promote())


def test_leaderless_unhealthy_replica_never_promotes() -> None:
    d = decide(obs("n2", replica_pg(None, healthy=False), lv()))
    assert d.actions == ()


def test_leaderless_replica_on_old_timeline_never_promotes() -> None:
    d = decide(obs("n2", replica_pg(None, timeline=1), lv(hist=history((1, 800)))))
    assert d.actions == ()


@pytest.mark.parametrize("cluster", [settings(paused=True), settings(failover_mode=FailoverMode.MANUAL)])
def test_leaderless_manual_never_auto_promotes(cluster: ClusterSettings) -> None:
    d = decide(obs("n2", replica_pg(None), lv(cluster=cluster)))
    assert d.actions == ()


@pytest.mark.parametrize("cluster", [settings(paused=True), settings(failover_mode=FailoverMode.MANUAL)])
def test_leaderless_manual_explicit_failover_promotes(cluster: ClusterSettings) -> None:
    v = lv(cluster=cluster, failover=switchover(None, "n2", kind="failover"))
    d = decide(obs("n2", replica_pg(None), v, ps=peers(peer("n3", 2000))))
    assert d.actions == (AcquireLease(), Promote())


def test_leaderless_explicit_failover_still_refuses_lagging_candidate() -> None:
    lim = settings().maximum_lag_on_failover
    v = lv(failover=switchover(None, "n2", kind="failover"), leader_lsn=1000 + lim + 1)
    assert decide(obs("n2", replica_pg(None), v)).actions == ()


def test_leaderless_on_mode_only_sync_standby_promotes() -> None:
    v = lv(cluster=settings(synchronous_mode=SyncMode.ON), sync=sync_state("n1", "n3"))
    # n2 is ahead of n3 but not synchronous
    assert decide(obs("n2", replica_pg(None, lsn=2000, received_lsn=2000, replayed_lsn=2000), v,
                      ps=peers(peer("n3")))).actions == ()
    d = decide(obs("n3", replica_pg(None), v, ps=peers(peer("n2", 2000))))
    assert d.actions == (AcquireLease(), Promote())


def test_leaderless_quorum_needs_n_minus_k_plus_one_readings() -> None:
    s = settings(synchronous_mode=SyncMode.QUORUM)
    v = lv(cluster=s, sync=sync_state("n1", "n2", "n3", quorum=1))
    # N=2, k=1: needs both readings
    assert decide(obs("n2", replica_pg(None), v, ps=peers(peer("n3", reachable=False)))).actions == ()
    assert decide(obs("n2", replica_pg(None), v, ps=peers(peer("n3")))).actions == (AcquireLease(), Promote())
    assert decide(obs("n2", replica_pg(None), v, ps=peers(peer("n3", 1001)))).actions == ()


def test_leaderless_empty_sync_set_in_sync_mode_only_old_leader_promotes() -> None:
    """Rule 7: the set went empty (the only synchronous standby died, the primary went async).
    Commits it acknowledged synchronously before that may exist only on the old primary."""
    v = lv(cluster=settings(synchronous_mode=SyncMode.ON), sync=SyncState("n1", frozenset(), 0))
    assert decide(obs("n2", replica_pg(None), v)).actions == ()
    d = decide(obs("n1", replica_pg(None), v, ps=peers(peer("n2"))))
    assert d.actions == (AcquireLease(), Promote())


def test_leaderless_sync_mode_off_with_empty_set_anyone_promotes() -> None:
    v = lv(sync=SyncState("n1", frozenset(), 0))
    assert decide(obs("n2", replica_pg(None), v)).actions == (AcquireLease(), Promote())


def test_promote_always_after_acquire() -> None:
    """Rule 4: every decision that promotes without already holding the key acquires it first."""
    for d in [
        decide(obs("n2", replica_pg(None), lv())),
        decide(obs("n2", replica_pg(None), lv(failover=switchover(None, "n2", kind="failover")))),
    ]:
        acts = list(d.actions)
        assert Promote() in acts
        assert acts.index(AcquireLease()) < acts.index(Promote())


def test_stopped_replica_with_stopped_pg_and_paused_waits() -> None:
    assert decide(obs("n2", stopped_pg(), lv(cluster=settings(paused=True)))).actions == ()


def test_no_decision_promotes_or_starts_primary_without_lease() -> None:
    """Rules 4, 5, 12 over a grid of situations: a node that does not hold the lease never ends a
    decision running as primary without an AcquireLease first."""
    pgs = [primary_pg(), replica_pg(None), stopped_pg(was_primary=True), empty_pg()]
    views = [view("n1"), view("n2", [member("n1"), member("n2", Role.PRIMARY)]), lv(), None]
    for pg in pgs:
        for v in views:
            for held in (False, True):
                o = obs("n1", pg, v if v is not None else view("n1"), held=held,
                        unreachable=v is None)
                acts = list(decide(o).actions)
                holds_key = v is not None and v.leader is not None and v.leader.name == "n1"
                for i, a in enumerate(acts):
                    if isinstance(a, Promote) or (isinstance(a, StartPostgres) and a.role == "primary"):
                        assert (holds_key and held) or AcquireLease() in acts[:i], (pg, v, held, acts)
                if isinstance(v, type(None)) or not holds_key:
                    assert not any(isinstance(a, StopPostgres) and a.mode != "fast" for a in acts)
