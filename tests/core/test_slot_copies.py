"""Copies of the primary's logical slots on failover candidates (core/slot_copies.py, rule 19):
never ahead of the candidate's own WAL, never trusted across a timeline they reach past."""

from __future__ import annotations

from dataclasses import replace

from pgwarden.core import slot_copies as C
from pgwarden.core.actions import (
    AdvanceLogicalSlots,
    CopyLogicalSlots,
    DropLogicalSlots,
    SetStandbySlots,
    StopPostgres,
)
from pgwarden.core.decide import decide
from pgwarden.core.logical import LogicalObjects, SlotInfo
from pgwarden.core.model import HistoryEntry, Observation, Role
from tests.core.builders import leader_obs, member, obs, primary_pg, replica_pg, stat, view

NONE: dict[str, SlotInfo] = {}


def objs(**slots: SlotInfo) -> LogicalObjects:
    return LogicalObjects({}, {}, slots)


def test_a_missing_slot_is_copied_and_an_own_copy_advanced_no_further_than_our_replay() -> None:
    p = C.plan({"a": 500, "b": 900}, {"b": SlotInfo(100)}, {"b": 1}, 1, (), replayed=700)
    assert p.copy == {"a"}
    assert p.advance == (("b", 700),)
    assert p.drop == frozenset()


def test_copies_we_did_not_make_or_that_the_primary_dropped_are_dropped() -> None:
    local = {"old": SlotInfo(100), "foreign": SlotInfo(100), "lost": SlotInfo(100, lost=True)}
    p = C.plan({"foreign": 200, "lost": 200}, local, {"old": 1, "lost": 1}, 1, (), replayed=300)
    assert p.drop == {"old", "foreign", "lost"}
    assert p.copy == frozenset()


def test_a_copy_ahead_of_our_own_wal_is_dropped() -> None:
    p = C.plan({"a": 900}, {"a": SlotInfo(800)}, {"a": 1}, 1, (), replayed=700)
    assert p.drop == {"a"}


def test_a_copy_from_an_earlier_timeline_is_kept_only_if_it_ends_before_that_timeline_did() -> None:
    hist = (HistoryEntry(1, 600, "failover"),)
    assert C.trusted("a", SlotInfo(500), {"a": 1}, 2, hist)
    assert not C.trusted("a", SlotInfo(700), {"a": 1}, 2, hist)
    assert not C.trusted("a", SlotInfo(500), {"a": 3}, 2, hist)


def _replica(version: int, slots: dict[str, SlotInfo], copies: dict[str, int] | None = None,
             **kw: object) -> Observation:
    pg = replica_pg(version=version, logical=objs(**slots), slot_copies=copies or {},
                    replayed_lsn=5000, lsn=5000)
    # n3 streams and already holds its copy: it leaves n2 the turn (test_slot_copies_turns.py).
    st = view("n1", [member("n1", Role.PRIMARY, logical_slots=(("s1", 4000),), **kw), member("n2"),
                     member("n3", streaming=True, logical_slots=(("s1", 4000),))])
    return obs("n2", pg, st)


def test_a_candidate_on_15_copies_then_restarts_to_load_the_copy() -> None:
    d = decide(_replica(15, NONE))
    kinds = [type(a) for a in d.actions]
    assert kinds == [CopyLogicalSlots, StopPostgres]
    assert d.actions[0] == CopyLogicalSlots(frozenset({"s1"}), d.actions[0].source)  # type: ignore[union-attr]
    assert d.actions[0].source.name == "n1"  # type: ignore[union-attr]


def test_a_candidate_on_15_advances_its_copy() -> None:
    d = decide(_replica(15, {"s1": SlotInfo(1000)}, {"s1": 1}))
    assert AdvanceLogicalSlots((("s1", 4000),)) in d.actions
    assert not any(isinstance(a, StopPostgres) for a in d.actions)


def test_nofailover_members_keep_no_copies() -> None:
    o = _replica(15, NONE)
    o = replace(o, me=replace(o.me, tags=replace(o.me.tags, nofailover=True)))
    assert not any(isinstance(a, CopyLogicalSlots) for a in decide(o).actions)


def test_on_17_a_demoted_primarys_failover_slot_is_dropped_and_native_slots_are_not_copied() -> None:
    slots = {"s1": SlotInfo(4000, failover=True, synced=True), "old": SlotInfo(3000, failover=True)}
    d = decide(_replica(18, slots, native_slots=("s1",)))
    assert DropLogicalSlots(frozenset({"old"})) in d.actions
    assert not any(isinstance(a, (CopyLogicalSlots, StopPostgres)) for a in d.actions)


def test_on_17_a_slot_without_failover_is_still_copied() -> None:
    d = decide(_replica(18, NONE))
    assert any(isinstance(a, CopyLogicalSlots) for a in d.actions)


def test_on_17_the_primary_waits_for_the_streaming_candidates_only() -> None:
    pg = primary_pg(version=18, logical=objs(s1=SlotInfo(10, failover=True)),
                    replication=(stat("n2", 10), stat("n3", 10, state="catchup"), stat("n4", 10)))
    st = view("n1", [member("n1", Role.PRIMARY), member("n2"), member("n3"),
                     member("n4", tags={"nofailover": True})])
    d = decide(leader_obs(pg, st))
    assert SetStandbySlots(frozenset({"n2"})) in d.actions
    d = decide(leader_obs(primary_pg(version=18, logical=objs()), st))
    assert SetStandbySlots(frozenset()) in d.actions
    d = decide(leader_obs(primary_pg(version=16, logical=objs(s1=SlotInfo(10))), st))
    assert not any(isinstance(a, SetStandbySlots) for a in d.actions)


def test_slot_copies_break_ties_only_never_outranking_wal_or_priority() -> None:
    from pgwarden.core.candidates import Candidate, best

    assert best([Candidate("a", 1, 100, 1, 0), Candidate("b", 1, 100, 1, 1)]).name == "b"  # type: ignore[union-attr]
    assert best([Candidate("a", 1, 101, 1, 0), Candidate("b", 1, 100, 1, 1)]).name == "a"  # type: ignore[union-attr]
    assert best([Candidate("a", 2, 100, 1, 0), Candidate("b", 1, 200, 1, 1)]).name == "a"  # type: ignore[union-attr]


def test_a_leaderless_replica_waits_for_an_equal_peer_that_holds_the_slot_copies() -> None:
    from tests.core.builders import peer, peers

    ms = [member("n2"), member("n3", logical_slots=(("s1", 900),))]
    d = decide(obs("n2", replica_pg(lsn=1000, received_lsn=1000, replayed_lsn=1000), view(None, ms),
                   ps=peers(peer("n3", 1000))))
    assert not any(type(a).__name__ == "AcquireLease" for a in d.actions), d
    ms = [member("n2"), member("n3", logical_slots=(("s1", 900),))]
    d = decide(obs("n2", replica_pg(lsn=1001, received_lsn=1001, replayed_lsn=1001), view(None, ms),
                   ps=peers(peer("n3", 1000))))
    assert any(type(a).__name__ == "AcquireLease" for a in d.actions), d


def test_copies_are_kept_while_the_leader_is_not_running_as_primary() -> None:
    pg = replica_pg(version=15, logical=objs(s1=SlotInfo(1000)), slot_copies={"s1": 1}, replayed_lsn=5000)
    st = view("n1", [member("n1", Role.PRIMARY, running=False), member("n2"), member("n3")])
    d = decide(obs("n2", pg, st))
    assert not any(isinstance(a, DropLogicalSlots) for a in d.actions)


def test_no_restart_for_a_copy_while_paused() -> None:
    from pgwarden.core.settings import ClusterSettings

    o = _replica(15, NONE)
    assert o.store is not None
    o = replace(o, store=replace(o.store, settings=ClusterSettings(paused=True)))
    d = decide(o)
    assert not any(isinstance(a, (CopyLogicalSlots, StopPostgres)) for a in d.actions)
    assert "paused" in d.message
