"""A candidate whose turn it is to restart for slot copies leaves the synchronous standbys first
(core/slot_copies.leaving_sync, rule 19): it publishes `leaving_sync`, the leader moves its
promise and its synchronous_standby_names to another standby by the usual safe steps
(sync.next_step), and the candidate restarts only once the leader's key no longer names it
among the standbys its commits wait for. Before, the restart held every commit up until the
leader noticed the standby gone, a loop or more later.

The walk below plays the leader's and the candidate's decisions against each other, loop by
loop, with the store's promise and the primary's setting carried from one loop to the next."""

from __future__ import annotations

from dataclasses import replace

import pytest

from pgwarden.core import slot_copies as C
from pgwarden.core.actions import ApplySync, CopyLogicalSlots, StopPostgres, WriteSyncState
from pgwarden.core.decide import decide
from pgwarden.core.logical import LogicalObjects
from pgwarden.core.model import NO_SYNC, Observation, Role, SyncConfig, SyncState
from pgwarden.core.settings import ClusterSettings, SyncMode
from tests.core.builders import leader_obs, member, obs, primary_pg, replica_pg, stat, view

SLOT = (("s1", 4000),)
ON = ClusterSettings(synchronous_mode=SyncMode.ON)
ON2 = ClusterSettings(synchronous_mode=SyncMode.ON, synchronous_node_count=2)
QUORUM = ClusterSettings(synchronous_mode=SyncMode.QUORUM)
STRICT = ClusterSettings(synchronous_mode=SyncMode.ON, synchronous_mode_strict=True)


class Walk:
    """n1 leads; `standbys` stream from it and lack their copy of n1's slot s1."""

    def __init__(self, mode: ClusterSettings, standbys: tuple[str, ...]) -> None:
        self.mode, self.standbys = mode, standbys
        self.stored: SyncState | None = None
        self.pg: SyncConfig = NO_SYNC
        self.leaving: dict[str, bool] = dict.fromkeys(standbys, False)
        self.log: list[str] = []

    def members(self, lacking: bool) -> list:  # type: ignore[type-arg]
        leader = member("n1", Role.PRIMARY, logical_slots=SLOT, waits_for=tuple(sorted(self.pg.members)))
        return [leader, *(member(n, streaming=True, leaving_sync=self.leaving[n],
                                 logical_slots=() if lacking else SLOT) for n in self.standbys)]

    def leader_loop(self, lacking: bool) -> None:
        v = view("n1", self.members(lacking), cluster=self.mode, sync=self.stored)
        pg = primary_pg(version=15, sync=self.pg, sync_applied_lsn=1000,
                        replication=tuple(stat(n, 1000) for n in self.standbys))
        for a in decide(leader_obs(pg, v)).actions:
            if isinstance(a, WriteSyncState):
                self.stored = replace(a.state, token=f"s{len(self.log)}")
                self.log.append(f"store {sorted(a.state.members)} k={a.state.quorum}")
            elif isinstance(a, ApplySync):
                self.pg = a.config
                self.log.append(f"pg ANY {a.config.quorum} {sorted(a.config.members)}")

    def candidate(self, name: str) -> Observation:
        v = view("n1", self.members(lacking=True), cluster=self.mode, sync=self.stored)
        pg = replica_pg(version=15, logical=LogicalObjects({}, {}, {}), replayed_lsn=5000, lsn=5000)
        return obs(name, pg, v)

    def settle(self) -> None:
        """Loops of the leader alone until the promise and the setting stop changing."""
        for _ in range(10):
            before = (self.stored, self.pg)
            self.leader_loop(lacking=False)
            if (self.stored, self.pg) == before:
                return
        raise AssertionError(f"the synchronous set does not settle: {self.log}")


def restarts(o: Observation) -> bool:
    kinds = [type(a) for a in decide(o).actions]
    return CopyLogicalSlots in kinds and StopPostgres in kinds


@pytest.mark.parametrize("mode", [ON, ON2, QUORUM, STRICT], ids=["on", "on-2", "quorum", "strict"])
def test_the_candidate_restarts_only_once_the_primary_no_longer_waits_for_it(mode: ClusterSettings) -> None:
    standbys = ("n2", "n3")
    w = Walk(mode, standbys)
    w.settle()
    assert "n2" in w.pg.members, w.log  # n2 is one the primary waits for
    loops = 0
    for loops in range(8):  # noqa: B007 (read after the loop)
        o = w.candidate("n2")
        w.leaving["n2"] = C.leaving_sync(o)  # published at the end of its loop
        if restarts(o):
            assert "n2" not in w.pg.members, w.log
            break
        assert w.leaving["n2"], decide(o).message
        assert "leaving the synchronous standbys first" in decide(o).message
        w.leader_loop(lacking=True)
    else:
        raise AssertionError(f"n2 never restarted: {w.log}")
    assert loops <= 3, w.log  # the leader lets go in a few loops: store first, then its setting
    # The other standby is waited for: commits go on being acknowledged, and only by it.
    assert w.pg.members == {"n3"}, w.log
    assert w.stored is not None and "n2" not in w.stored.members, w.log


@pytest.mark.parametrize("mode", [ON, QUORUM, STRICT], ids=["on", "quorum", "strict"])
def test_with_no_standby_to_stand_in_the_candidate_does_not_leave(mode: ClusterSettings) -> None:
    # Leaving would empty the promise: not strict, the primary would commit asynchronously for
    # as long as the candidate waits; strict, it would wait for any standby ("*"), which a
    # logical subscriber's walsender satisfies. The restart's short hold-up is the lesser cost.
    w = Walk(mode, ("n2",))
    w.settle()
    o = w.candidate("n2")
    assert not C.leaving_sync(o)
    assert restarts(o)
    assert w.pg.members == {"n2"}, w.log


def test_a_standby_that_may_not_be_synchronous_does_not_stand_in() -> None:
    w = Walk(ON, ("n2", "n3"))
    w.settle()
    o = w.candidate("n2")
    assert o.store is not None
    n3 = replace(o.store.members["n3"], tags=replace(o.store.members["n3"].tags, nosync=True))
    o = replace(o, store=replace(o.store, members={**o.store.members, "n3": n3}))
    assert not C.leaving_sync(o)
    assert restarts(o)


def test_a_candidate_waiting_for_its_turn_does_not_leave() -> None:
    w = Walk(ON, ("n2", "n3"))
    w.settle()
    assert not C.leaving_sync(w.candidate("n3"))  # n2 comes first in name order
    assert C.leaving_sync(w.candidate("n2"))


def test_paused_nobody_leaves() -> None:
    w = Walk(ClusterSettings(synchronous_mode=SyncMode.ON, paused=True), ("n2", "n3"))
    w.settle()
    assert not C.leaving_sync(w.candidate("n2"))


def test_the_wait_for_the_leader_to_let_go_is_bounded() -> None:
    # A leader that never lets go (an agent from before leaving_sync, say) keeps the candidate
    # from its copies for at most COPY_TURN_PATIENCE.
    w = Walk(ON, ("n2", "n3"))
    w.settle()
    assert "n2" in w.pg.members
    o = w.candidate("n2")
    assert not restarts(replace(o, copies_pending_for=C.COPY_TURN_PATIENCE - 0.1))
    assert C.leaving_sync(replace(o, copies_pending_for=C.COPY_TURN_PATIENCE - 0.1))
    assert restarts(replace(o, copies_pending_for=C.COPY_TURN_PATIENCE))
    # Past the bound it no longer asks to leave: a copy that keeps failing must not keep it out
    # of the synchronous set for good (with one standby in `on` mode: a primary gone async).
    assert not C.leaving_sync(replace(o, copies_pending_for=C.COPY_TURN_PATIENCE))


def test_the_leader_does_not_choose_a_leaving_standby() -> None:
    w = Walk(ON, ("n2", "n3"))
    w.leaving["n2"] = True
    w.settle()
    assert w.pg.members == {"n3"} and w.stored is not None and w.stored.members == {"n3"}, w.log


def test_the_flag_and_the_setting_travel_in_the_member_document() -> None:
    m = member("n1", Role.PRIMARY, waits_for=("n2", "n3"))
    back = type(m).from_dict(m.to_dict())
    assert back.waits_for == ("n2", "n3") and not back.leaving_sync
    s = member("n2", leaving_sync=True)
    assert type(s).from_dict(s.to_dict()).leaving_sync
    # A document from an agent that predates both reads as "waits for nobody", "not leaving".
    old = {k: v for k, v in s.to_dict().items() if k not in ("waits_for", "leaving_sync")}
    assert type(s).from_dict(old).waits_for == () and not type(s).from_dict(old).leaving_sync
