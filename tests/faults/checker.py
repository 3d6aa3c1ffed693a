"""The checker of a fault-injection run: pure functions over the recorded history (no I/O, no
clock), so each rule is unit-tested on synthetic histories in test_checker.py.

Times are the client's monotonic clock. An acknowledgement only says the commit happened at some
instant between the moment its statement was sent (`sent`) and the moment the acknowledgement
arrived (`at`); every rule below reasons with that interval, never with one point, so a slow
client thread can neither hide a violation nor invent one.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Ack:
    """One acknowledged commit."""

    id: int
    writer: int
    sent: float  # monotonic, just before the statement was sent
    at: float  # monotonic, just after the acknowledgement arrived
    server: str  # inet_server_addr():inet_server_port() of the connection that committed
    timeline: int  # the server's timeline when the connection was made


@dataclass(frozen=True)
class Failure:
    """One attempt that did not end in an acknowledgement."""

    writer: int
    id: int | None  # None when no statement was sent (the connection failed)
    at: float
    phase: str  # "connect" | "write" | "indeterminate" (a commit that may or may not stand)
    error: str


@dataclass(frozen=True)
class Window:
    """Where a server certainly accepted writes on one timeline: it committed at or before its
    first acknowledgement arrived and at or after its last statement was sent, and a server's
    writable time on one timeline is contiguous (it can only leave it by a restart), so it was
    writable throughout [start, end]. Empty (start >= end) with fewer than two overlapping acks."""

    server: str
    timeline: int
    start: float  # first ack's `at`
    end: float  # last ack's `sent`
    first_sent: float
    last_at: float
    count: int


@dataclass(frozen=True)
class Violation:
    kind: str  # "concurrent-writers" | "timeline-reused" | "stale-timeline" | "lost-commit"
    detail: str


def windows(acks: Iterable[Ack]) -> list[Window]:
    groups: dict[tuple[str, int], list[Ack]] = defaultdict(list)
    for a in acks:
        groups[(a.server, a.timeline)].append(a)
    out = []
    for (server, tl), group in groups.items():
        out.append(Window(
            server=server, timeline=tl,
            start=min(a.at for a in group), end=max(a.sent for a in group),
            first_sent=min(a.sent for a in group), last_at=max(a.at for a in group), count=len(group),
        ))
    return sorted(out, key=lambda w: (w.first_sent, w.server))


def concurrent_writers(acks: Sequence[Ack]) -> list[Violation]:
    """Rule (a): at no instant did two servers accept writes.

    - Two servers' certain windows overlap: both were writable during the overlap.
    - One server's acknowledgement interval [sent, at] lies inside another server's window: the
      first committed while the second was certainly writable.
    - Two servers acknowledged on the same timeline: each timeline is born from one promotion
      of one server, so this is a forked history even when the windows do not overlap.
    - A server acknowledged on timeline T after an acknowledgement on a newer timeline had
      arrived: an old primary took writes after a promotion (the new one may since have died).
    """
    out: list[Violation] = []
    ws = windows(acks)
    for i, a in enumerate(ws):
        for b in ws[i + 1:]:
            if a.server == b.server:
                continue
            lo, hi = max(a.start, b.start), min(a.end, b.end)
            if lo < hi:
                out.append(Violation("concurrent-writers", (
                    f"{a.server} (timeline {a.timeline}, acks {a.start:.3f}..{a.end:.3f}) and "
                    f"{b.server} (timeline {b.timeline}, acks {b.start:.3f}..{b.end:.3f}) both "
                    f"accepted writes during {lo:.3f}..{hi:.3f}")))
            if a.timeline == b.timeline:
                out.append(Violation("timeline-reused", (
                    f"{a.server} and {b.server} both acknowledged commits on timeline {a.timeline} "
                    f"({a.first_sent:.3f}..{a.last_at:.3f} and {b.first_sent:.3f}..{b.last_at:.3f})")))
    reported: set[tuple[str, str, int]] = set()
    by_sent = sorted(acks, key=lambda a: a.sent)
    sent_times = [a.sent for a in by_sent]
    for w in ws:
        if w.start >= w.end:
            continue
        for x in by_sent[bisect.bisect_right(sent_times, w.start):bisect.bisect_left(sent_times, w.end)]:
            if x.server == w.server or x.at >= w.end:
                continue
            key = (x.server, w.server, w.timeline)
            if key in reported:
                continue
            reported.add(key)
            out.append(Violation("concurrent-writers", (
                f"{x.server} (timeline {x.timeline}) acknowledged id {x.id} in {x.sent:.3f}..{x.at:.3f}, "
                f"while {w.server} (timeline {w.timeline}) accepted writes throughout "
                f"{w.start:.3f}..{w.end:.3f}")))
    # Stale timelines: the newest timeline acknowledged so far, in order of arrival.
    by_arrival = sorted(acks, key=lambda a: a.at)
    newest: Ack | None = None
    stale_seen: set[tuple[str, int]] = set()
    j = 0
    for y in by_sent:
        while j < len(by_arrival) and by_arrival[j].at < y.sent:
            x = by_arrival[j]
            if newest is None or x.timeline > newest.timeline:
                newest = x
            j += 1
        if newest is not None and y.timeline < newest.timeline and (y.server, y.timeline) not in stale_seen:
            stale_seen.add((y.server, y.timeline))
            out.append(Violation("stale-timeline", (
                f"{y.server} acknowledged id {y.id} on timeline {y.timeline} (sent {y.sent:.3f}) after "
                f"{newest.server} had acknowledged id {newest.id} on timeline {newest.timeline} "
                f"(at {newest.at:.3f})")))
    return out


def missing(acks: Iterable[Ack], present: Iterable[int]) -> list[Ack]:
    have = set(present)
    return sorted((a for a in acks if a.id not in have), key=lambda a: a.at)


def lost_commits(acks: Iterable[Ack], present: Iterable[int]) -> list[Violation]:
    """Rule (b): every acknowledged commit is on the final primary (synchronous mode)."""
    missing_acks = missing(acks, present)
    if not missing_acks:
        return []
    sample = ", ".join(f"{a.id}@{a.server}/tl{a.timeline}/{a.at:.3f}" for a in missing_acks[:10])
    return [Violation("lost-commit", f"{len(missing_acks)} acknowledged commit(s) missing on the final "
                                     f"primary: {sample}")]


def convergence_problems(statuses: Mapping[str, Mapping[str, Any] | None]) -> list[str]:
    """Rule (c): every node is back — its agent answers, PostgreSQL runs, exactly one primary,
    every other node a running replica on the primary's timeline that streams. Empty when
    converged."""
    problems: list[str] = []
    primaries = [n for n, s in statuses.items() if s is not None and s.get("role") == "primary"
                 and s.get("state") == "running"]
    if len(primaries) != 1:
        problems.append(f"expected one running primary, saw {sorted(primaries) or 'none'}")
    elif not (statuses[primaries[0]] or {}).get("holds_lease"):
        problems.append(f"{primaries[0]} runs as primary without holding the lease")
    leader = statuses[primaries[0]] if len(primaries) == 1 else None
    leader_tl = leader.get("timeline") if leader is not None else None
    for name, s in sorted(statuses.items()):
        if s is None:
            problems.append(f"{name}: agent does not answer")
            continue
        if s.get("state") != "running":
            problems.append(f"{name}: state {s.get('state')!r} ({s.get('message')})")
            continue
        if name in primaries:
            continue
        if s.get("role") != "replica":
            problems.append(f"{name}: role {s.get('role')!r} ({s.get('message')})")
        elif leader_tl is not None and s.get("timeline") != leader_tl:
            problems.append(f"{name}: timeline {s.get('timeline')} but the primary is on {leader_tl} "
                            f"({s.get('message')})")
        elif s.get("replication_state") != "streaming":
            # A replica that does not stream holds nothing newer than its last contact: a cluster
            # is only back when every replica receives the primary's WAL again.
            problems.append(f"{name}: replica not streaming ({s.get('message')})")
    return problems


def summary(acks: Sequence[Ack], failures: Sequence[Failure]) -> str:
    """One paragraph for the test log: who acknowledged what, when."""
    lines = [f"{len(acks)} acknowledged commits, {len(failures)} failed attempts "
             f"({sum(f.phase == 'indeterminate' for f in failures)} indeterminate)"]
    for w in windows(acks):
        lines.append(f"  {w.server} timeline {w.timeline}: {w.count} acks, "
                     f"{w.first_sent:.3f}..{w.last_at:.3f}")
    return "\n".join(lines)
