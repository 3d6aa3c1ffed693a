"""Random fault schedules in the simulated world (`tests/core/sim`): crashes, freezes, store and
network cuts, replicas falling behind and switchover requests at random moments, with the world's
invariants checked after every effect; once the faults heal, the cluster settles on one primary
that leads in the store."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgwarden.core.model import FailoverRequest
from pgwarden.core.settings import ClusterSettings
from tests.core.sim.world import DT, World

FAULTS = st.sampled_from(["crash", "freeze", "store_cut", "peer_cut", "slow", "switchover"])
Event = tuple[float, str, str, float]


@st.composite
def schedules(draw: st.DrawFn, horizon: int = 160) -> list[Event]:
    events = draw(st.lists(
        st.tuples(
            st.integers(1, horizon).map(lambda i: i * DT),
            st.sampled_from(["n1", "n2", "n3"]),
            FAULTS,
            st.integers(1, 40).map(lambda i: i * DT),
        ),
        max_size=8,
    ))
    return sorted(events)


def play(w: World, events: list[Event], until: float) -> None:
    """Inject `events` at their times while ticking up to `until`."""
    pending = list(events)
    while w.t < until:
        while pending and pending[0][0] <= w.t:
            _, name, fault, length = pending.pop(0)
            node = w.nodes[name]
            if fault == "crash":  # machine down for `length`
                w.crash(name, length)
            elif fault == "freeze":
                node.frozen_until = max(node.frozen_until, w.t + length)
            elif fault == "store_cut":
                node.store_cut_until = w.t + length
            elif fault == "peer_cut":
                node.peers_cut_until = w.t + length
            elif fault == "slow":
                node.slow_until = w.t + length
            elif fault == "switchover":
                leader = w.leader_key()
                if leader is not None and leader != name:
                    w.ctl().set_failover(FailoverRequest("switchover", leader, name, None), None, 1.0)
        w.tick()  # every action inside is checked


def settle(w: World) -> None:
    """All faults healed: one primary, the one the store names."""
    w.run(30)
    assert len(w.primaries()) == 1, (w.primaries(), w.log[-20:])
    assert w.leader_key() == w.primaries()[0]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=schedules(), loop_phase=st.booleans())
def test_random_faults_never_two_writable_primaries(events: list[Event], loop_phase: bool) -> None:
    w = World()
    if loop_phase:
        for n in w.nodes.values():
            n.phase = 0.0  # every node's loop at the same instant
    play(w, events, 45)
    settle(w)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=schedules())
def test_random_faults_under_tight_timing(events: list[Event]) -> None:
    w = World(cluster=ClusterSettings(ttl=3, loop_wait=1, retry_timeout=1))
    play(w, events, 45)
    settle(w)
