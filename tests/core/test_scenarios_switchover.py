"""Switchover stories in the simulated world (`tests/core/sim`): requests written to the store as
`ctl` writes them, carried out by the real executor on every node."""

from __future__ import annotations

import pytest

from pgwarden.core.model import FailoverRequest
from tests.core.sim.world import World


def test_switchover() -> None:
    w = World()
    w.run(5)
    w.request(FailoverRequest("switchover", "n1", "n2", None))
    w.run(10)
    assert w.primaries() == ["n2"]
    assert w.failover_request() is None
    assert w.nodes["n1"].pg.role == "replica" and w.streaming(w.nodes["n1"])
    assert [p[1] for p in w.promotions] == ["n2"]


@pytest.mark.parametrize("names", [("n1", "n2", "n3"), ("n3", "n1", "n2")], ids=["lowest", "highest"])
def test_switchover_without_a_candidate_hands_over(names: tuple[str, ...]) -> None:
    """No candidate named: the departing leader (its WAL the newest, its name possibly first in
    the tie-break) must not rank as a candidate, or the replicas wait for it while it waits for
    them and the cluster stays without a primary."""
    w = World(names)
    w.run(5)
    old = names[0]
    w.request(FailoverRequest("switchover", old, None, None))
    w.run(5)  # well within patience (ttl): no stall rule involved
    assert len(w.primaries()) == 1 and w.primaries() != [old], w.log[-10:]
    assert w.failover_request() is None
    assert [p[1] for p in w.promotions] == w.primaries()


def test_a_switchover_waits_for_replicas_still_getting_ready() -> None:
    """Right after a switchover every replica may still be reconnecting. A second request then
    finds none ready for longer than the leaderless patience (ttl): the leader, which still leads,
    must keep the request and hand over once one is ready, not drop it."""
    w = World()
    w.run(5)
    for n in ("n2", "n3"):
        w.nodes[n].peers_cut_until = w.t + 3 * w.s.ttl  # unreadable and not streaming for 3 ttl
    w.request(FailoverRequest("switchover", "n1", None, None))
    w.run(2 * w.s.ttl)
    assert w.primaries() == ["n1"] and w.failover_request() is not None, w.log[-10:]
    w.run(3 * w.s.ttl)
    assert len(w.primaries()) == 1 and w.primaries() != ["n1"], w.log[-10:]
    assert w.failover_request() is None


@pytest.mark.parametrize("fault", ["self_unhealthy", "loop_hung"])
def test_a_named_candidate_that_never_acts_does_not_leave_the_cluster_leaderless(fault: str) -> None:
    """The request names n2, which will not take over. `self_unhealthy`: its peers read it as a
    running replica but its own health query fails, so it refuses to promote; n1 hands over and
    waits, and after the patience bound someone acts and drops the request. `loop_hung`: its HA
    loop blocks outright; its member key expires and nobody waits for it."""
    w = World()
    w.run(5)
    w.request(FailoverRequest("switchover", "n1", "n2", None))
    if fault == "self_unhealthy":
        w.nodes["n2"].pg.unhealthy = True
    else:
        w.nodes["n2"].loop_hung = True
    w.run(4 * w.s.ttl)
    assert len(w.primaries()) == 1 and w.primaries() != ["n2"], w.log[-10:]
    if fault == "self_unhealthy":
        assert w.failover_request() is None
