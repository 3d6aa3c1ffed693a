"""The store's timeline history, merged from a new primary's .history file (pure): entries the
store already has are kept as they are; new ones name the promoted member and the time."""

from __future__ import annotations

from collections.abc import Iterable

from pgwarden.core.model import HistoryEntry


def merge_history(
    rows: Iterable[tuple[int, int, str]],
    known: Iterable[HistoryEntry],
    me: str,
    timeline: int,
    wall: float,
    default_reason: str = "",
) -> tuple[HistoryEntry, ...]:
    """`rows`: (timeline, switch LSN, reason) of `<timeline>.history`; `me` became the primary of
    `timeline`, so the entry for `timeline - 1` names it as the new leader."""
    by_tl = {e.timeline: e for e in known}
    out: list[HistoryEntry] = []
    for tl, lsn, reason in rows:
        old = by_tl.get(tl)
        if old is not None:
            out.append(old)
        else:
            out.append(HistoryEntry(tl, lsn, reason or default_reason, wall,
                                    me if tl == timeline - 1 else None))
    return tuple(out)
