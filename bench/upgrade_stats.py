"""Pure pieces of the major-version upgrade benchmark (`bench/upgrade.py`): what one writer saw
(its attempts in order) turned into the table's figures, and the table itself. No I/O here."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Attempt:
    """One transaction the writer tried: monotonic start and end, and what came back."""

    start: float
    end: float
    id: int | None = None  # the acknowledged key; None if not acknowledged
    major: int | None = None  # the server's major version that acknowledged it
    error: str = ""  # the error class name when not acknowledged
    connecting: bool = False  # failed before a transaction could be sent (no session)
    message: str = ""  # the error's first line

    @property
    def ok(self) -> bool:
        return self.id is not None


@dataclass(frozen=True)
class Figures:
    failed_tx: int  # INSERTs sent and not acknowledged
    failed_connects: int  # sessions that could not be opened
    longest_gap: float  # longest time between two successive acknowledged commits
    longest_tx: float  # the longest single attempt, acknowledged or not
    duplicates: int  # unique violations plus ids acknowledged twice
    unavailable: float | None  # first attempt not acknowledged by `old` .. first ack by `new`


def longest_gap(attempts: Sequence[Attempt]) -> float:
    """The longest time between the acknowledgements of two successive commits."""
    acks = [a.end for a in attempts if a.ok]
    return max((b - a for a, b in itertools.pairwise(acks)), default=0.0)


def unavailability(attempts: Sequence[Attempt], old: int, new: int) -> tuple[float, float] | None:
    """(start, end) of the writes' unavailability across a switch from major `old` to `new`:
    from the start of the first attempt after the last commit `old` acknowledged before `new`'s
    first (the first write that failed or blocked) to the end of `new`'s first acknowledgement.
    None if the writer never saw both versions in that order."""
    first_new = next((i for i, a in enumerate(attempts) if a.ok and a.major == new), None)
    if first_new is None:
        return None
    last_old = next((i for i in range(first_new - 1, -1, -1)
                     if attempts[i].ok and attempts[i].major == old), None)
    if last_old is None:
        return None
    return attempts[last_old + 1].start, attempts[first_new].end


def duplicates(attempts: Sequence[Attempt]) -> int:
    ids = [a.id for a in attempts if a.id is not None]
    return sum(1 for a in attempts if a.error == "UniqueViolation") + len(ids) - len(set(ids))


def error_summary(attempts: Sequence[Attempt], top: int = 3) -> str:
    """The most frequent error messages with their counts, e.g. '12x "server conn crashed?"'."""
    counts = Counter(a.message for a in attempts if not a.ok)
    return "; ".join(f'{n}x "{m}"' for m, n in counts.most_common(top)) or "no errors"


def figures(attempts: Sequence[Attempt], old: int, new: int) -> Figures:
    span = unavailability(attempts, old, new)
    return Figures(
        failed_tx=sum(1 for a in attempts if not a.ok and not a.connecting),
        failed_connects=sum(1 for a in attempts if not a.ok and a.connecting),
        longest_gap=longest_gap(attempts),
        longest_tx=max((a.end - a.start for a in attempts), default=0.0),
        duplicates=duplicates(attempts),
        unavailable=None if span is None else span[1] - span[0],
    )


def streaming_since(samples: Sequence[tuple[float, bool]]) -> float | None:
    """The time from which every sample (time, all standbys streaming) says streaming, up to the
    last one; None if the last sample does not. Samples are in time order."""
    since: float | None = None
    for t, ok in samples:
        if not ok:
            since = None
        elif since is None:
            since = t
    return since


def standbys_back(samples: Sequence[tuple[float, bool]], start: float) -> float | None:
    """Seconds from `start` until the standbys streamed for good (0 if they never stopped
    after it); None if they do not stream at the last sample."""
    since = streaming_since(samples)
    return None if since is None else max(0.0, since - start)


@dataclass(frozen=True)
class Row:
    method: str
    figures: Figures
    rows_lost: int
    standbys_back: float | None
    version: str  # the major `SELECT version()` reported through the same DSN afterwards


HEADER = ("tool / method", "failed tx", "failed connects", "longest wait: gap / tx (s)",
          "rows lost", "duplicate keys", "unavailable (s)", "standbys back (s)", "version after")


def _secs(x: float | None) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:.3f}"


def cells(r: Row) -> tuple[str, ...]:
    f = r.figures
    return (r.method, str(f.failed_tx), str(f.failed_connects),
            f"{f.longest_gap:.3f} / {f.longest_tx:.3f}", str(r.rows_lost), str(f.duplicates),
            _secs(f.unavailable), _secs(r.standbys_back), r.version)


def markdown_table(rows: Sequence[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(cells(r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"
