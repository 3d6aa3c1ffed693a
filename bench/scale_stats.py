"""Pure pieces of the store scale benchmark (`bench/scale.py`): percentiles, the missed-renewal
bookkeeping of one simulated leader, and the summary line scripts read. No I/O here."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from pgwarden.agent.lease import LeaseKeeper

SUMMARY_RE = re.compile(
    r"^clusters=(?P<clusters>\d+) missed_renewals=(?P<missed>\d+) "
    r"p99_ms=(?P<p99>\d+(?:\.\d+)?) store_cpu_s=(?P<cpu>\d+(?:\.\d+)?)$"
)


def percentile(samples: Sequence[float], q: float) -> float:
    """The `q`-th percentile (0..100) by the nearest-rank method; NaN for no samples. Nearest
    rank never invents a value between two samples, so p99 of 100 samples is the 99th."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100; got {q:g}")
    if not samples:
        return math.nan
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class Summary:
    clusters: int
    missed_renewals: int
    p99_ms: float
    store_cpu_s: float


def summary_line(s: Summary) -> str:
    """The line `bench/scale.py` ends with (issue 16: scripts read it)."""
    p99 = 0.0 if math.isnan(s.p99_ms) else s.p99_ms
    return (f"clusters={s.clusters} missed_renewals={s.missed_renewals} "
            f"p99_ms={p99:.1f} store_cpu_s={s.store_cpu_s:.2f}")


def parse_summary(line: str) -> Summary:
    """The summary line back into numbers; ValueError naming the expected form if it is not one."""
    m = SUMMARY_RE.match(line.strip())
    if m is None:
        raise ValueError(f"not a scale summary line (want 'clusters=N missed_renewals=M "
                         f"p99_ms=X store_cpu_s=Y'): {line!r}")
    return Summary(int(m["clusters"]), int(m["missed"]), float(m["p99"]), float(m["cpu"]))


class RenewalBook:
    """One simulated leader's lease as the agent's `LeaseKeeper` would keep it, and how often a
    renewal missed: it did not complete, successfully, before the deadline that LeaseKeeper held
    when it was sent (sent_at + ttl - LEASE_MARGIN of the last renewal that made it in time).
    Each lapsed deadline counts once; after one the leader is treated as having lost the lease
    (the real one would have fenced) until a renewal or acquisition succeeds again."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self.lease = LeaseKeeper()
        self.missed = 0
        self.renewals = 0  # attempts, successful or not

    def acquired(self, sent_at: float) -> None:
        self.lease.renewed(sent_at, self.ttl)

    def lapsed(self, now: float) -> bool:
        """Check at the start of a loop: a held lease whose deadline passed is a miss (once)."""
        if self.lease.held and now >= self.lease.deadline:
            self.missed += 1
            self.lease.lost()
            return True
        return False

    def renewal(self, sent_at: float, done_at: float, ok: bool) -> None:
        """Record one renewal attempt sent at `sent_at` that answered `ok` at `done_at`."""
        self.renewals += 1
        held, deadline = self.lease.held, self.lease.deadline
        in_time = held and done_at <= deadline
        if ok and (in_time or not held):
            self.lease.renewed(sent_at, self.ttl)  # in time, or taking a lapsed lease back
            return
        if held and done_at > deadline:
            self.missed += 1  # answered (or failed) only after the deadline it had to beat
            self.lease.lost()
            if ok:
                self.lease.renewed(sent_at, self.ttl)  # the key is still ours: hold it again
        # A failure before the deadline is not yet a miss: the next loop may still make it.

    def call_timeout(self, now: float, retry_timeout: float) -> float:
        """The store call deadline the agent would use (clipped to the lease; SAFETY rule 15)."""
        return self.lease.call_timeout(now, retry_timeout)
