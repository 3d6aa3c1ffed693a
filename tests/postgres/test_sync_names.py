"""Parsing synchronous_standby_names as the server shows it (SHOW / current_setting) into the
SyncConfig the core reasons with: every form PostgreSQL's grammar (syncrep_gram.y) accepts."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgwarden.core.model import NO_SYNC, SyncConfig
from pgwarden.postgres.conf import sync_standby_names
from pgwarden.postgres.sync_names import (
    UNREADABLE,
    LiveSyncTracker,
    SyncNamesError,
    parse_sync_standby_names,
    read_live,
)


def sc(k: int, *names: str) -> SyncConfig:
    return SyncConfig(k, frozenset(names))


@pytest.mark.parametrize(("value", "expected"), [
    ("", NO_SYNC),
    # A bare list is FIRST 1 (...), the pre-9.6 form.
    ("r1", sc(1, "r1")),
    ("r1, r2", sc(1, "r1", "r2")),
    ("r1,r2,r3", sc(1, "r1", "r2", "r3")),
    ("  r1 ,\tr2\n", sc(1, "r1", "r2")),
    # k (...) is FIRST k (...). FIRST waits for k listed standbys too: as strong as ANY k.
    ("2 (r1, r2, r3)", sc(2, "r1", "r2", "r3")),
    ("2(r1,r2)", sc(2, "r1", "r2")),
    ("FIRST 1 (r1, r2)", sc(1, "r1", "r2")),
    ("first 2 (r1, r2)", sc(2, "r1", "r2")),
    ("FiRsT 1 (r1)", sc(1, "r1")),
    ("ANY 1 (r1)", sc(1, "r1")),
    ("any 2 (r1, r2, r3)", sc(2, "r1", "r2", "r3")),
    ("ANY 3(r1,r2,r3)", sc(3, "r1", "r2", "r3")),
    # What conf.sync_standby_names writes: every name double-quoted.
    ('ANY 1 ("r1")', sc(1, "r1")),
    ('ANY 2 ("ghost", "r1")', sc(2, "ghost", "r1")),
    ('ANY 1 ("Node A", "we""ird", "a,b", "(x)")', sc(1, "Node A", 'we"ird', "a,b", "(x)")),
    ('"any", "FIRST"', sc(1, "any", "FIRST")),  # quoted keywords are names
    # Unquoted names keep their case (PostgreSQL does not fold them).
    ("Node_1, node$2", sc(1, "Node_1", "node$2")),
    ("anything, firstly", sc(1, "anything", "firstly")),  # longer than a keyword: a name
    ("nöde", sc(1, "nöde")),
    # Numbers are names inside a list.
    ("1, 2", sc(1, "1", "2")),
    ("2 (1, 2, 3)", sc(2, "1", "2", "3")),
    ("7", sc(1, "7")),
    # The wildcard: any standby.
    ("*", sc(1, "*")),
    ("ANY 2 (*)", sc(2, "*")),
    ("FIRST 2 (*)", sc(2, "*")),
    ('"*"', sc(1, "*")),
    # A list holding the wildcard can be satisfied by any standby at all.
    ("r1, *", sc(1, "*")),
    ("ANY 2 (r1, *)", sc(2, "*")),
    # Repeats collapse (the set is what the core reasons about).
    ("r1, r1", sc(1, "r1")),
])
def test_parses(value: str, expected: SyncConfig) -> None:
    assert parse_sync_standby_names(value) == expected


@pytest.mark.parametrize("value", [
    " ",  # PostgreSQL rejects a blank value (only '' means "none")
    "ANY",
    "ANY 1",
    "ANY (r1)",
    "ANY 1 r1",
    "ANY 1 (r1",
    "ANY 1 (r1))",
    "ANY 1 (r1) r2",
    "ANY 0 (r1)",  # PostgreSQL: must be greater than zero
    "0 (r1)",
    "FIRST 0 (r1)",
    "ANY x (r1)",
    "ANY 1 ()",
    "(r1)",
    "r1 r2",
    "r1,",
    ",r1",
    "r1,,r2",
    "any",  # a bare keyword is not a name
    "first, r1",
    "r1; r2",
    "r-1",
    '"unterminated',
    '"r1" "r2"',
    "1abc",
    "2 (r1), r2",
])
def test_rejects(value: str) -> None:
    with pytest.raises(SyncNamesError):
        parse_sync_standby_names(value)


names = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=12)


@given(st.integers(min_value=1, max_value=5), st.frozensets(names, min_size=1, max_size=5))
def test_reads_back_what_conf_writes(k: int, members: frozenset[str]) -> None:
    cfg = SyncConfig(k, members)
    expected = SyncConfig(k, frozenset({"*"})) if "*" in members else cfg
    assert parse_sync_standby_names(sync_standby_names(cfg)) == expected


@pytest.mark.parametrize("cfg", [NO_SYNC, sc(1, "*"), sc(3, "*"), sc(2, "a", "B", 'c"d')])
def test_reads_back_special_forms(cfg: SyncConfig) -> None:
    assert parse_sync_standby_names(sync_standby_names(cfg)) == cfg


def test_read_live_never_raises() -> None:
    assert read_live('ANY 1 ("r1")') == sc(1, "r1")
    assert read_live("ANY (") == UNREADABLE
    assert "*" in UNREADABLE.members  # enforces no promise


def test_tracker_counts_a_setting_from_when_it_was_first_seen() -> None:
    t = LiveSyncTracker()
    a, b = 'ANY 1 ("r1")', 'ANY 1 ("r1", "r2")'
    assert t.note(10, a, False, 100) == sc(1, "r1") and t.applied_lsn == 100
    t.note(10, a, False, 200)
    assert t.applied_lsn == 100  # unchanged setting: still in effect since 100
    t.note(10, b, False, 300)
    assert t.applied_lsn == 300 and t.sync == sc(1, "r1", "r2") and t.names == b
    assert t.known(10) == sc(1, "r1", "r2") and t.known(11) is None
    t.note(11, b, False, 400)  # another postmaster: its setting took effect at its start
    assert t.applied_lsn == 400


def test_tracker_standby_counts_from_its_promotion() -> None:
    t = LiveSyncTracker()
    t.note(10, "*", True, None)
    assert t.applied_lsn is None and t.sync == sc(1, "*")
    t.note(10, "*", False, 500)
    assert t.applied_lsn == 500
    t.note(10, "*", False, 600)
    assert t.applied_lsn == 500


def test_tracker_reload_may_change_the_setting_unseen() -> None:
    """A reload to B that we never saw answer, then back to A: commits went out under B, so A
    counts again from the next answer, not from when A was first seen."""
    t = LiveSyncTracker()
    a = 'ANY 1 ("r1")'
    t.note(10, a, False, 100)
    t.reloading(sc(1, "r1", "r2"))
    assert t.sync is None
    t.note(10, a, False, 700)
    assert t.applied_lsn == 700
    t.reloading(sc(1, "r1"))  # reloading the setting it already runs changes nothing
    t.note(10, a, False, 800)
    assert t.applied_lsn == 700
    t.forget()
    t.note(10, a, False, 900)
    assert t.applied_lsn == 900
