"""`decide` for a follower (rules 5, 11) and for a cluster without a leader (rules 7, 9, 10), and
the cross-cutting properties: nothing promotes or starts a primary without the lease (rules 4,
5, 12). One test (or a few) per branch."""

from __future__ import annotations

from typing import Any

import pytest

from pgwarden.config.schema import ClusterSettings, FailoverMode, SyncMode
from pgwarden.core.actions import (
    AcquireLease,
    Demote,
    Follow,
    Promote,
    Reclone,
    Rewind,
    StartPostgres,
    StopPostgres,
)
from pgwarden.core.decide import decide, stuck_after
from pgwarden.core.model import ClusterView, Role, SyncState

from .builders import (
    UP_N1,
    UP_N2,
    empty_pg,
    history,
    kinds,
    member,
    obs,
    peer,
    peers,
    primary_pg,
    replica_pg,
    settings,
    stopped_pg,
    switchover,
    sync_state,
    view,
)

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
