"""The store's timeline history, merged from a new primary's .history file (pure): entries the
store already has are kept as they are; new ones name the promoted member and the time."""

from __future__ import annotations

from collections.abc import Iterable

from pgwarden.core.model import HistoryEntry

# What PostgreSQL writes into a .history file for every plain promotion: it says nothing.
GENERIC_REASON = "no recovery target specified"


def merge_history(
    rows: Iterable[tuple[int, int, str]],
    known: Iterable[HistoryEntry],
    me: str,
    timeline: int,
    wall: float,
    default_reason: str = "",
) -> tuple[HistoryEntry, ...]:
    """`rows`: (timeline, switch LSN, reason) of `<timeline>.history`; `me` became the primary of
    `timeline`, so the entry for `timeline - 1` names it as the new leader, with `default_reason`
    (why it was promoted) in place of PostgreSQL's generic reason."""
    by_tl = {e.timeline: e for e in known}
    out: list[HistoryEntry] = []
    for tl, lsn, reason in rows:
        old = by_tl.get(tl)
        if old is not None:
            out.append(old)
        else:
            if not reason or reason == GENERIC_REASON:
                reason = default_reason or reason
            out.append(HistoryEntry(tl, lsn, reason, wall, me if tl == timeline - 1 else None))
    return tuple(out)
