"""Timeline arithmetic (SAFETY rules 11, 12): may this data directory follow the leader as it is,
or did it fork from the leader's history and need pg_rewind (or a fresh clone) first?"""

from __future__ import annotations

from pgwarden.core.model import HistoryEntry


def diverged(
    local_timeline: int | None,
    local_lsn: int | None,
    was_primary: bool | None,
    leader_timeline: int | None,
    history: tuple[HistoryEntry, ...],
    unknown_diverges: bool = True,
) -> bool:
    """True when the local data may hold WAL the leader's timeline does not have.

    A former primary on an older timeline is always treated as diverged: after a crash its WAL
    may run past its last checkpoint, which pg_controldata cannot show; pg_rewind answers "no
    rewind required" cheaply when that was not so.
    """
    if local_timeline is None or leader_timeline is None:
        return bool(was_primary)
    if local_timeline == leader_timeline:
        return False
    if local_timeline > leader_timeline:
        return True
    if was_primary:
        return True
    ended = [e.switch_lsn for e in history if e.timeline == local_timeline]
    if not ended:
        # The leader's history does not show where our timeline ended (yet: a new leader
        # publishes it right after promoting). A stopped node plays safe; a running replica waits.
        return unknown_diverges
    return local_lsn is not None and local_lsn > min(ended)


def forked_on_one_timeline(
    local_timeline: int | None,
    local_lsn: int | None,
    was_primary: bool | None,
    leader_timeline: int | None,
    leader_lsn: int | None,
) -> bool:
    """A former primary on the very timeline another leader runs as primary, holding WAL past the
    leader's position. A primary appears only by bootstrap or by promotion, and promotion always
    opens a new timeline, so two primaries on one timeline means one of them was started as a
    primary without promotion: the histories differ while the timeline numbers agree, which
    `diverged` (and pg_rewind) cannot see. Only a fresh clone is safe then.

    Comparing by LSN keeps a freshly cloned replica (whose pg_control still says "in
    production", copied from the primary) from counting: its checkpoint is behind the leader.
    """
    if not was_primary or local_timeline is None or local_timeline != leader_timeline:
        return False
    return local_lsn is not None and leader_lsn is not None and local_lsn > leader_lsn
