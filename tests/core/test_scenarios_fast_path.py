"""The confirmed-crash fast path (SAFETY rule 16) in the simulated world (`tests/core/sim`): the
real executor takes the leader key over in the in-memory store; the world checks after every
effect that no two primaries are writable, that a writable primary holds the key, and that no
acknowledged commit is lost. The random schedules of test_scenarios_sync.py exercise it too."""

from __future__ import annotations

from pgwarden.core.settings import ClusterSettings, SyncMode
from tests.core.sim.world import World
from tests.core.test_scenarios_sync import stored_sync

ON = ClusterSettings(synchronous_mode=SyncMode.ON)
QUORUM = ClusterSettings(synchronous_mode=SyncMode.QUORUM)


def _settled(cluster: ClusterSettings) -> tuple[World, str]:
    w = World(cluster=cluster)
    w.run(10)
    s = stored_sync(w)
    assert s is not None and s.members
    return w, sorted(s.members)[0]


def _took_over(w: World) -> bool:
    return any("taking over its key without waiting for the lease" in line for line in w.log)


def test_a_crashed_primary_is_replaced_before_its_lease_could_expire() -> None:
    for cluster in (ON, QUORUM):
        w, _ = _settled(cluster)
        crashed_at = w.t
        w.crash("n1", 20)
        w.run(8)
        assert w.promotions, w.log[-10:]
        at, who, _ = w.promotions[0]
        assert who != "n1" and _took_over(w), w.log[-10:]
        assert at < crashed_at + cluster.ttl - 1.0, f"promoted at {at}, crash at {crashed_at}: not early"
        w.run(30)  # the old primary's agent restarts: it finds the key taken and rejoins
        assert w.primaries() == [who] and w.leader_key() == who
        assert w.nodes["n1"].pg.role == "replica", w.log[-10:]


def test_a_frozen_agent_is_waited_out() -> None:
    w, _ = _settled(ON)
    w.nodes["n1"].frozen_until = w.t + 30  # SIGSTOP: its PostgreSQL still runs and listens
    w.run(20)
    assert w.promotions and not _took_over(w), w.log[-10:]


def test_asynchronous_mode_never_takes_over_early() -> None:
    w = World()
    w.run(10)
    w.crash("n1", 20)
    w.run(20)
    assert w.promotions and not _took_over(w), w.log[-10:]


def test_a_candidate_cut_from_the_old_primary_sees_no_refusal_and_waits() -> None:
    w, standby = _settled(ON)
    w.nodes[standby].peers_cut_until = w.t + 30  # its probes time out (and it stops streaming)
    w.crash("n1", 40)
    w.run(25)
    assert not _took_over(w), w.log[-10:]


def test_a_member_that_cannot_answer_keeps_the_lease_path() -> None:
    w, standby = _settled(ON)
    other = next(n for n in ("n2", "n3") if n != standby)
    w.nodes[other].frozen_until = w.t + 30  # its agent does not answer /leader-check
    w.crash("n1", 40)
    w.run(25)
    assert w.promotions and not _took_over(w), w.log[-10:]
