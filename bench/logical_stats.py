"""Pure pieces of the logical replication benchmark (`bench/logical.py`): the median / max
summary, the exact-rows comparison, throughput and the printed tables. No I/O here."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class RunResult:
    """One source failover: seconds from the kill to the first write acknowledged by the new
    source primary and to the first of its changes seen on the subscriber; the subscriber's rows
    against the new source primary's after the writer stopped."""

    old: str
    new: str
    first_write: float
    first_change: float
    missing: int
    extra: int


def median_max(samples: Sequence[float], unit: str = "s") -> str:
    """'1.23 / 2.34 s over 5', or 'no samples'."""
    if not samples:
        return "no samples"
    return f"{statistics.median(samples):.2f} / {max(samples):.2f} {unit} over {len(samples)}"


def missing_extra(source: Iterable[object], subscriber: Iterable[object]) -> tuple[int, int]:
    """(rows of the source the subscriber lacks, rows of the subscriber the source lacks); a row
    the subscriber holds twice counts once as extra."""
    src = list(source)
    sub = list(subscriber)
    s, d = set(src), set(sub)
    return len(s - d), len(d - s) + (len(sub) - len(d))


def mb_per_s(mb: float, seconds: float) -> float:
    """Throughput; NaN when no time passed (nothing to divide by)."""
    if seconds <= 0:
        return math.nan
    return mb / seconds


def render_table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    """A pipe table padded per column (the bench scripts' end-of-run print)."""
    if any(len(r) != len(header) for r in rows):
        raise ValueError(f"every row needs {len(header)} cells")
    widths = [max(len(c) for c in col) for col in zip(header, *rows, strict=True)]

    def line(cells: tuple[str, ...]) -> str:
        return " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return "\n".join([line(header), "-|-".join("-" * w for w in widths), *(line(r) for r in rows)])


def run_rows(runs: Sequence[RunResult]) -> list[tuple[str, ...]]:
    """The per-run table's rows."""
    return [(str(i), f"{r.old} -> {r.new}", f"{r.first_write:.2f}", f"{r.first_change:.2f}",
             str(r.missing), str(r.extra)) for i, r in enumerate(runs, 1)]


RUN_HEADER = ("run", "source failover", "kill to first write on new primary (s)",
              "kill to first change at subscriber (s)", "missing", "extra")
