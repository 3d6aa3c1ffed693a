"""How long an agent has been waiting on others: since when the store has shown no leader, and
since when it has shown the current failover or switchover request. The runner (and the
simulator in the tests) feeds it every store answer with the time; the durations go into the
`Observation` that bounds the core's waits (`leaderless.patience`, `leaderless.request_patience`).
Pure: the caller passes the clock.
"""

from __future__ import annotations

from dataclasses import dataclass

from pgwarden.core.model import ClusterView, FailoverRequest, PgView


@dataclass
class WaitClocks:
    leaderless_since: float | None = None
    request_seen: tuple[FailoverRequest, float] | None = None  # the request, first seen at

    def saw(self, view: ClusterView, now: float) -> None:
        """The store answered with `view` at `now`."""
        if view.leader is not None:
            self.leaderless_since = None
        elif self.leaderless_since is None:
            self.leaderless_since = now
        req = view.failover
        if req is None:
            self.request_seen = None
        elif self.request_seen is None or self.request_seen[0] != req:
            self.request_seen = (req, now)

    def leaderless_for(self, now: float) -> float:
        return 0.0 if self.leaderless_since is None else now - self.leaderless_since

    def request_pending_for(self, now: float) -> float:
        return 0.0 if self.request_seen is None else now - self.request_seen[1]


def streams_usefully(pg: PgView, leader_timeline: int | None) -> bool:
    """A running replica streams in a way that counts: its WAL receiver streams, on the leader's
    timeline. A forked former primary's receiver connects, streams the old timeline up to the
    fork, is cut off and retries every wal_retrieve_retry_interval; each retry looks like
    "streaming" for a moment and must not restart the clock that lets pg_rewind look at it."""
    on_leader_tl = leader_timeline is None or pg.timeline is None or pg.timeline >= leader_timeline
    return pg.streaming and on_leader_tl


@dataclass
class StreamClock:
    """Since when a running replica has not streamed usefully (`decide.stuck_after` bounds it)."""

    since: float | None = None

    def saw(self, pg: PgView, leader_timeline: int | None, now: float) -> None:
        if pg.running and pg.in_recovery and not streams_usefully(pg, leader_timeline):
            if self.since is None:
                self.since = now
        else:
            self.since = None

    def restart(self) -> None:
        """A fresh start (rewind, clone, start) gets a fresh stuck_after."""
        self.since = None

    def not_streaming_for(self, now: float) -> float:
        return 0.0 if self.since is None else now - self.since


@dataclass
class CopyClock:
    """Since when this candidate has had copies of the leader's slots to load
    (`slot_copies.pending_copies`); `Observation.copies_pending_for`."""

    since: float | None = None

    def saw(self, pending: bool, now: float) -> None:
        if not pending:
            self.since = None
        elif self.since is None:
            self.since = now

    def pending_for(self, now: float) -> float:
        return 0.0 if self.since is None else now - self.since


@dataclass
class UnhealthyClock:
    """Since when the postmaster has been alive but failing the health query (rule 9's
    "healthy"; a leader unhealthy for longer than ttl fences itself and releases the lease)."""

    since: float | None = None

    def saw(self, pg: PgView, now: float) -> None:
        if pg.running and not pg.healthy:
            if self.since is None:
                self.since = now
        else:
            self.since = None

    def unhealthy_for(self, now: float) -> float:
        return 0.0 if self.since is None else now - self.since
