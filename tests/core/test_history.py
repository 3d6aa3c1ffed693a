"""merge_history: the store's timeline history from a new primary's .history file."""

from __future__ import annotations

from pgwarden.core.history import merge_history
from pgwarden.core.model import HistoryEntry


def test_known_entries_are_kept_and_new_ones_name_the_new_leader() -> None:
    known = (HistoryEntry(1, 100, "crash", 5.0, "n2"),)
    rows = [(1, 100, "no recovery target specified"), (2, 300, "")]
    out = merge_history(rows, known, "n3", 3, 9.0, "promoted by hand")
    assert out == (known[0], HistoryEntry(2, 300, "promoted by hand", 9.0, "n3"))


def test_only_the_timeline_just_ended_names_us() -> None:
    out = merge_history([(1, 100, "a"), (2, 300, "b")], (), "n1", 3, 1.0)
    assert [e.new_leader for e in out] == [None, "n1"]


def test_our_reason_replaces_postgresql_s_generic_one_but_not_a_real_one() -> None:
    rows = [(1, 100, "no recovery target specified")]
    assert merge_history(rows, (), "n2", 2, 1.0, "switchover from n1")[0].reason == "switchover from n1"
    rows = [(1, 100, "before transaction 742")]  # a point-in-time recovery target says something
    assert merge_history(rows, (), "n2", 2, 1.0, "switchover from n1")[0].reason == "before transaction 742"
