"""`decide` for a node that leads or could: the store unreachable (rules 2, 3), bootstrap and
data, the leader's own loop and its synchronous step (rules 4-6, 12). One test (or a few) per
branch, each stating the SAFETY rule it guards."""

from __future__ import annotations

import pytest

from pgwarden.config.schema import FENCE_BUDGET, LEASE_MARGIN, SyncMode
from pgwarden.core.actions import (
    AdoptExistingData,
    ApplySync,
    Bootstrap,
    ClearFailover,
    Clone,
    Demote,
    EnsureSlots,
    Promote,
    PublishHistory,
    ReleaseLease,
    RenewLease,
    StartPostgres,
    TakeInitLock,
    WriteSyncState,
)
from pgwarden.core.decide import decide
from pgwarden.core.model import DataState, PgView, Role, SyncState

from .builders import (
    NOW,
    UP_N1,
    UP_N2,
    empty_pg,
    history,
    kinds,
    leader_obs,
    member,
    obs,
    primary_pg,
    replica_pg,
    settings,
    stat,
    stopped_pg,
    switchover,
    sync_config,
    view,
)

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


def test_leader_in_sync_mode_records_itself_before_its_first_synchronous_standby() -> None:
    """No record in the store reads as "no promise": anyone could be promoted. Before the
    primary acknowledges a synchronous commit the store must say only the leader has them all
    (tests/core/test_scenarios_sync.py found a switchover losing one in that window)."""
    v = view("n1", cluster=settings(synchronous_mode=SyncMode.ON))
    pg = primary_pg(replication=(stat("n2", 1000), stat("n3", 900)))
    d = decide(leader_obs(pg, v))
    assert [a for a in d.actions if isinstance(a, (ApplySync, WriteSyncState))] == [
        WriteSyncState(SyncState("n1", frozenset(), 0), None)]


def test_leader_in_sync_mode_adds_standby_to_pg_first() -> None:
    v = view("n1", cluster=settings(synchronous_mode=SyncMode.ON), sync=SyncState("n1", frozenset(), 0, "s1"))
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
