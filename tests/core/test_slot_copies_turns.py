"""Candidates take turns restarting to load slot copies (core/slot_copies.turn_holder): one at a
time, in name order, never while another candidate is not streaming, and for no longer
than COPY_TURN_PATIENCE. A subscription created on a 15/16 primary must not take every standby
down at once: with them go the synchronous promise and every read replica."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from pgwarden.core import slot_copies as C
from pgwarden.core.actions import CopyLogicalSlots, StopPostgres
from pgwarden.core.decide import decide
from pgwarden.core.logical import LogicalObjects, SlotInfo
from pgwarden.core.model import MemberInfo, Observation, Role
from pgwarden.core.waits import CopyClock
from tests.core.builders import member, obs, replica_pg, view

SLOT = (("s1", 4000),)


def peer(name: str, *, lacking: bool = True, streaming: bool = True, running: bool = True,
         **kw: Any) -> MemberInfo:
    return member(name, streaming=streaming, running=running, logical_slots=() if lacking else SLOT, **kw)


def candidate(name: str, peers: list[MemberInfo], version: int = 15, pending_for: float = 0.0) -> Observation:
    """`name` streams on `version` and lacks its copy of the primary n1's slot s1."""
    pg = replica_pg(version=version, logical=LogicalObjects({}, {}, {}), replayed_lsn=5000, lsn=5000)
    ms = [member("n1", Role.PRIMARY, logical_slots=SLOT), peer(name), *peers]
    return replace(obs(name, pg, view("n1", ms)), copies_pending_for=pending_for)


def restarts(o: Observation) -> bool:
    kinds = [type(a) for a in decide(o).actions]
    return CopyLogicalSlots in kinds and StopPostgres in kinds


def test_two_candidates_lacking_a_copy_go_one_at_a_time_in_name_order() -> None:
    assert restarts(candidate("n2", [peer("n3")]))
    d = decide(candidate("n3", [peer("n2")]))
    assert not any(isinstance(a, (CopyLogicalSlots, StopPostgres)) for a in d.actions)
    assert "letting n2 go first" in d.message


def test_a_peer_back_from_its_restart_but_not_streaming_yet_still_has_the_turn() -> None:
    # n2 loaded its copy and restarted; its receiver has not reconnected: n3 is the only standby
    # streaming, and restarting it now would leave none.
    assert not restarts(candidate("n3", [peer("n2", lacking=False, streaming=False)]))
    assert restarts(candidate("n3", [peer("n2", lacking=False, streaming=True)]))


def test_a_peer_ahead_in_name_order_with_its_copy_already_does_not_hold_the_turn() -> None:
    assert restarts(candidate("n3", [peer("n2", lacking=False)]))


def test_a_peer_whose_postgres_is_down_holds_the_turn_and_one_that_may_not_fail_over_does_not() -> None:
    # The agent stops PostgreSQL to load copies in one loop and starts it in the next: in
    # between its key says "not running", and that peer is exactly the one to wait for.
    assert not restarts(candidate("n3", [peer("n2", running=False, streaming=False, lacking=False)]))
    assert not restarts(candidate("n2", [peer("n3", running=False, streaming=False, lacking=False)]))
    assert restarts(candidate("n3", [peer("n2", streaming=False, tags={"nofailover": True})]))


def test_a_lone_candidate_goes_at_once() -> None:
    assert restarts(candidate("n2", []))


def test_the_wait_for_a_turn_is_bounded() -> None:
    # A peer that never streams again (a broken upstream, say) must not keep our copy from us.
    stuck = [peer("n2", streaming=False)]
    assert not restarts(candidate("n3", stuck, pending_for=C.COPY_TURN_PATIENCE - 0.1))
    assert restarts(candidate("n3", stuck, pending_for=C.COPY_TURN_PATIENCE))


def test_a_copy_already_held_is_advanced_whatever_the_turns() -> None:
    o = candidate("n3", [peer("n2")])
    assert C.pending_copies(o) == {"s1"}
    pg = replace(o.pg, logical=LogicalObjects({}, {}, {"s1": SlotInfo(1000)}), slot_copies={"s1": 1})
    d = decide(replace(o, pg=pg))  # n3 holds a copy already: it advances it whatever the turns
    assert any(type(a).__name__ == "AdvanceLogicalSlots" for a in d.actions)
    assert C.pending_copies(replace(o, pg=pg)) == frozenset()


def test_on_17_only_slots_postgres_does_not_sync_itself_count_as_lacking() -> None:
    leader = member("n1", Role.PRIMARY, logical_slots=(("native", 10), ("s1", 4000)),
                    native_slots=("native",))
    o = candidate("n3", [peer("n2", lacking=False)], version=18)
    assert o.store is not None
    o = replace(o, store=replace(o.store, members={**o.store.members, "n1": leader}))
    assert C.turn_holder(o, leader) is None  # n2 holds s1; "native" is PostgreSQL's to keep


def test_the_copy_clock_runs_while_copies_are_pending_and_restarts_after_a_break() -> None:
    c = CopyClock()
    c.saw(True, 10.0)
    c.saw(True, 12.0)
    assert c.pending_for(15.0) == 5.0
    c.saw(False, 16.0)
    assert c.pending_for(17.0) == 0.0
    c.saw(True, 20.0)
    assert c.pending_for(21.0) == 1.0


NAMES = ("n2", "n3", "n4", "n5")
STATE = st.tuples(st.booleans(), st.booleans(), st.booleans())  # running, streaming, lacking


@given(st.lists(STATE, min_size=1, max_size=len(NAMES)))
def test_on_one_view_at_most_one_candidate_restarts_and_only_while_every_other_one_streams(
        states: list[tuple[bool, bool, bool]]) -> None:
    ms = {n: member(n, running=r, streaming=r and s, logical_slots=() if lack else SLOT)
          for n, (r, s, lack) in zip(NAMES, states, strict=False)}
    leader = member("n1", Role.PRIMARY, logical_slots=SLOT)
    v = view("n1", [leader, *ms.values()])
    going = []
    for n, m in ms.items():
        if not (m.running and m.streaming and m.logical_slots == ()):
            continue  # only a streaming candidate lacking its copy restarts for one
        pg = replica_pg(version=15, logical=LogicalObjects({}, {}, {}), replayed_lsn=5000, lsn=5000)
        if restarts(obs(n, pg, v)):
            going.append(n)
    assert len(going) <= 1
    for n in going:
        assert all(m.streaming for o, m in ms.items() if o != n)
    # Liveness: with every candidate streaming, the first lacking one goes.
    lacking = [n for n, m in ms.items() if m.streaming and m.logical_slots == ()]
    if lacking and all(m.streaming for m in ms.values()):
        assert going == [lacking[0]]
