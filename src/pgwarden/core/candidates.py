"""Choosing the new primary (SAFETY rules 9 and 10): who may be promoted, in which order, and
whether this node should go now or wait one loop for a better peer."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pgwarden.core.model import ClusterView, Observation, PeerReading, Role, Tags


@dataclass(frozen=True)
class Candidate:
    name: str
    priority: int
    lsn: int
    timeline: int | None
    slots: int = 0  # copies of logical slots it holds, as its member key shows (slot_copies.py)


def order_key(c: Candidate) -> tuple[int, int, int, str]:
    """Higher failover_priority first, then more WAL, then (a tie-break only) more copies of
    the primary's logical slots, then name: every node sorts alike. The slot copies never
    outrank priority or WAL (rules 9, 10): they only choose among otherwise equal candidates,
    so a subscriber's slot survives when it costs no acknowledged commit."""
    return (-c.priority, -c.lsn, -c.slots, c.name)


def slot_count(view: ClusterView, name: str) -> int:
    m = view.members.get(name)
    return len(m.logical_slots) if m is not None else 0


def latest_timeline(view: ClusterView) -> int | None:
    """The newest timeline the cluster is known to have reached (from history)."""
    if not view.history:
        return None
    return max(e.timeline for e in view.history) + 1


def eligibility(
    tags: Tags,
    healthy: bool,
    in_recovery: bool | None,
    lsn: int | None,
    timeline: int | None,
    view: ClusterView,
) -> str | None:
    """None when eligible, else the reason not to promote this member."""
    if tags.nofailover or tags.failover_priority <= 0:
        return "tagged nofailover"
    if not healthy:
        return "PostgreSQL is not healthy"
    if in_recovery is False:
        return "not a replica"
    if lsn is None:
        return "WAL position unknown"
    lim = view.settings.maximum_lag_on_failover
    if view.leader_lsn is not None and view.leader_lsn - lsn > lim:
        return f"lags {view.leader_lsn - lsn} bytes (maximum_lag_on_failover={lim})"
    newest = latest_timeline(view)
    if newest is not None and timeline is not None and timeline < newest:
        return f"on timeline {timeline}, the cluster reached timeline {newest}"
    return None


def peer_candidates(obs: Observation, view: ClusterView) -> Iterable[Candidate]:
    req = view.failover
    departing = req.leader if req is not None and req.kind == "switchover" else None
    for name, reading in obs.peers.items():
        if name == obs.me.name or not _peer_ok(reading):
            continue
        if name == departing:
            # The leader a switchover moves away from demoted itself and waits for a replica to
            # take over; with the newest WAL it would top every ranking, and the replicas would
            # wait for it while it waits for them.
            continue
        member = view.members.get(name)
        if member is None:
            # Its member key expired: it cannot reach the store, so it cannot take the lease.
            # Waiting for it (rule 10) would leave the cluster without a primary.
            continue
        tags = member.tags
        lsn = max(reading.received_lsn or 0, reading.replayed_lsn or 0) or reading.lsn
        if eligibility(tags, True, True, lsn, reading.timeline, view) is None and lsn is not None:
            yield Candidate(name, tags.failover_priority, lsn, reading.timeline, slot_count(view, name))


def _peer_ok(r: PeerReading) -> bool:
    return r.reachable and r.running and r.role == Role.REPLICA


def best(cands: Iterable[Candidate]) -> Candidate | None:
    ordered = sorted(cands, key=order_key)
    return ordered[0] if ordered else None
