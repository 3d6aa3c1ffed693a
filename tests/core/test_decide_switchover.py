"""`decide` for switchover and failover requests, on the leader and on the replicas (rules 7, 9,
10, and the bounded waits). One test (or a few) per branch."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from pgwarden.config.schema import LEASE_MARGIN, ClusterSettings, FailoverMode, SyncMode
from pgwarden.core.actions import (
    AcquireLease,
    ClearFailover,
    Demote,
    HoldClients,
    Promote,
    ReleaseLease,
    RenewLease,
)
from pgwarden.core.decide import decide
from pgwarden.core.leaderless import HANDOVER_STOP_RESERVE, patience, request_patience
from pgwarden.core.model import ClusterView, PeerReading, Role

from .builders import (
    NOW,
    UP_N2,
    UP_N3,
    WALL,
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
    switchover,
    sync_config,
    sync_state,
    view,
)

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


def test_each_promotion_says_why_for_the_timeline_history() -> None:
    """Promote.why becomes the history's reason (`ctl history`): a switchover, an operator's
    failover, an automatic failover."""
    ms = [member("n1"), member("n2"), member("n3")]
    near = ps_all = peers(peer("n1", 1000), peer("n3", 1000))  # n2 is behind for the requests
    cases = {
        "switchover from n1": switchover("n1", "n2"),
        "failover by an operator": switchover(None, "n2", kind="failover"),
    }
    for why, req in cases.items():
        d = decide(obs("n2", replica_pg(None, lsn=900, received_lsn=900, replayed_lsn=900),
                       view(None, ms, failover=req), ps=near))
        promote = next(a for a in d.actions if isinstance(a, Promote))
        assert promote.why == why
    d = decide(obs("n2", replica_pg(None, lsn=2000, received_lsn=2000, replayed_lsn=2000), view(None, ms),
                   ps=ps_all))
    promote = next(a for a in d.actions if isinstance(a, Promote))
    assert promote.why.startswith("automatic failover")
