"""Synchronous replication in the simulated world (`tests/core/sim`), `synchronous_mode` `on` and
`quorum`. A simulated primary acknowledges a commit only once the standbys its live
`synchronous_standby_names` waits for have flushed it; the world checks after every effect that
each primary holds every commit acknowledged before it (SAFETY rules 6-8), besides the lease
invariants. The store's synchronous set is written by the real executor (`WriteSyncState`), the
primary's setting applied through the PostgreSQL port (`ApplySync`, `Promote(sync=...)`)."""

from __future__ import annotations

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pgwarden.core.model import NO_SYNC, FailoverRequest, SyncConfig, SyncState
from pgwarden.core.settings import ClusterSettings, SyncMode
from tests.core.sim.world import World
from tests.core.test_scenarios_random import Event, play, schedules, settle

ON = ClusterSettings(synchronous_mode=SyncMode.ON)
QUORUM = ClusterSettings(synchronous_mode=SyncMode.QUORUM)
STRICT = ClusterSettings(synchronous_mode=SyncMode.ON, synchronous_mode_strict=True)


def stored_sync(w: World) -> SyncState | None:
    return w.ctl().snapshot(1.0).sync


def test_on_mode_promises_one_standby_and_the_primary_waits_for_it() -> None:
    w = World(cluster=ON)
    w.run(10)
    s = stored_sync(w)
    assert s is not None and s.leader == "n1" and s.quorum == 1 and len(s.members) == 1, s
    assert w.nodes["n1"].pg.sync == SyncConfig(1, s.members)
    assert w.acked is not None and w.acked[1] > 10  # commits go on being acknowledged


def test_quorum_mode_promises_any_one_of_both_standbys() -> None:
    w = World(cluster=QUORUM)
    w.run(10)
    s = stored_sync(w)
    assert s is not None and s.quorum == 1 and s.members == {"n2", "n3"}, s
    assert w.nodes["n1"].pg.sync == SyncConfig(1, frozenset({"n2", "n3"}))


def test_on_mode_primary_crash_promotes_the_synchronous_standby() -> None:
    w = World(cluster=ON)
    w.run(10)
    s = stored_sync(w)
    assert s is not None
    (standby,) = s.members
    w.crash("n1", 20)
    w.run(15)
    assert [p[1] for p in w.promotions] == [standby], w.log[-10:]
    w.run(15)
    assert w.nodes["n1"].pg.role == "replica" and w.streaming(w.nodes["n1"])


def test_on_mode_a_lagging_standby_leaves_the_set_before_the_primary_stops_waiting() -> None:
    """The synchronous standby is cut off: commits stop being acknowledged (never acknowledged
    on the primary alone), the set moves to the other standby, and a crash of the primary then
    promotes that one with every acknowledged commit."""
    w = World(cluster=ON)
    w.run(10)
    s = stored_sync(w)
    assert s is not None
    (first,) = s.members
    (other,) = {"n2", "n3"} - {first}
    w.nodes[first].peers_cut_until = w.t + 60
    w.run(15)
    s = stored_sync(w)
    assert s is not None and s.members == {other}, (s, w.log[-10:])
    w.crash("n1", 30)
    w.run(15)
    assert w.primaries() == [other], w.log[-10:]


def test_quorum_mode_primary_crash_waits_to_read_enough_voters() -> None:
    """ANY 1 (n2, n3): a commit may sit on either. n3 is cut off from everyone when the primary
    dies, so n2 cannot read N - k + 1 = 2 voters and must not promote (rule 7) until n3 can be
    read; then the newer of the two is promoted."""
    w = World(cluster=QUORUM)
    w.run(10)
    w.nodes["n3"].peers_cut_until = w.t + 12
    w.run(0.5)
    w.crash("n1", 60)
    w.run(10)
    assert w.primaries() == [] and w.promotions == [], w.log[-10:]
    w.run(15)
    assert len(w.primaries()) == 1, w.log[-10:]


def test_strict_mode_without_standbys_acknowledges_nothing() -> None:
    """Rule 8: with no synchronous standby, a strict primary blocks commits, not goes async."""
    w = World(cluster=STRICT)
    w.run(10)
    for n in ("n2", "n3"):
        w.crash(n, 60)
    w.run(5)
    before = w.acked
    w.run(10)
    assert w.primaries() == ["n1"] and w.acked == before
    assert w.nodes["n1"].pg.sync != NO_SYNC


def test_switchover_in_on_mode_goes_to_the_synchronous_standby() -> None:
    w = World(cluster=ON)
    w.run(10)
    s = stored_sync(w)
    assert s is not None
    (standby,) = s.members
    w.request(FailoverRequest("switchover", "n1", None, None))
    w.run(10)
    assert w.primaries() == [standby], w.log[-10:]


MODES = st.sampled_from([ON, QUORUM, STRICT, ClusterSettings(synchronous_mode=SyncMode.QUORUM,
                                                              synchronous_node_count=2)])


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=schedules(), mode=MODES)
# Found 2026-12-05: a switchover to a replica receiving nothing, before the first promise was stored.
@example(events=[(0.25, "n2", "slow", 2.0), (1.0, "n2", "switchover", 0.25)], mode=ON)
def test_random_faults_never_lose_an_acknowledged_commit(events: list[Event], mode: ClusterSettings) -> None:
    w = World(cluster=mode)
    play(w, events, 45)
    settle(w)


def test_a_new_synchronous_standby_enters_the_set_only_once_it_caught_up() -> None:
    """Rule 6, adding a member: n1 waits for one standby, which is cut off; the other one is
    streaming but far behind. The store's set must not name the laggard before it has flushed
    everything acknowledged so far: until then only n1 itself holds every acknowledged commit,
    and if it dies nobody may be promoted (the set is empty and names n1)."""
    w = World(cluster=ON)
    w.run(10)
    s = stored_sync(w)
    assert s is not None
    (first,) = s.members
    (other,) = {"n2", "n3"} - {first}
    w.nodes[other].slow_until = w.t + 60  # streaming, receiving nothing
    w.run(3)
    w.nodes[first].peers_cut_until = w.t + 60
    w.run(4)
    s = stored_sync(w)
    assert s is not None and other not in s.members, (s, w.log[-10:])
    w.crash("n1", 60)
    w.run(20)
    assert w.primaries() == [], w.log[-10:]


def test_a_new_primary_keeps_the_stored_promise_from_its_first_commit() -> None:
    """ANY 2 (n2, n3): every acknowledged commit is on both standbys. n1 dies and one of them is
    promoted; the store still promises "on 2 of n2, n3" until the new leader's first synchronous
    step, so the new primary must wait for the other voter from its first commit (`Promote(sync=
    ...)`, rule 6). If it does not, its commits are on itself alone, and when it dies too the other
    voter is promoted, rightly by the promise, without them."""
    w = World(cluster=ClusterSettings(synchronous_mode=SyncMode.QUORUM, synchronous_node_count=2))
    w.run(10)
    s = stored_sync(w)
    assert s is not None and s.quorum == 2 and s.members == {"n2", "n3"}, s
    w.crash("n1", 60)
    while not w.promotions:
        w.tick()
    new = w.promotions[0][1]
    (other,) = {"n2", "n3"} - {new}
    assert w.nodes[new].pg.sync == SyncConfig(1, frozenset({other}))
    while not (w.streaming(w.nodes[other]) and w.nodes[other].pg.timeline == w.nodes[new].pg.timeline):
        w.tick()
    w.nodes[other].slow_until = w.t + 5  # streaming from the new primary, receiving nothing more
    w.run(2)  # commits on the new primary: acknowledged only once the other voter has them
    w.crash(new, 60)
    w.run(20)  # the other voter is promoted, and must hold every acknowledged commit
    assert w.primaries() == [other]
