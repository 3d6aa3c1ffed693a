"""How long an agent has been waiting on others: since when the store has shown no leader, and
since when it has shown the current failover or switchover request. The runner (and the
simulator in the tests) feeds it every store answer with the time; the durations go into the
`Observation` that bounds the core's waits (`decide.patience`, `decide.request_patience`).
Pure: the caller passes the clock.
"""

from __future__ import annotations

from dataclasses import dataclass

from pgwarden.core.model import ClusterView, FailoverRequest


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
