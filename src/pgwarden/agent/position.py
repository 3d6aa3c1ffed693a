"""This node's WAL position read at the moment a peer asks (GET /position).

A candidate deciding a promotion compares its own position with the others' (rules 7, 10). What
each agent last published (GET /status, the member key) can be a loop old: in quorum mode
`ANY 1 (B, C)`, C may hold commits only C acknowledged while its published position does not
show them yet, and B would wrongly look newest. A reading taken after the candidate saw the
lease gone includes every commit acknowledged under that lease (each was flushed before it was
acknowledged, and acknowledged before the old primary's deadline), so the comparison is sound.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace

from pgwarden.api.health import leader_position
from pgwarden.core.model import ClusterView, PeerReading, PgView, Role
from pgwarden.postgres.controller import PostgresController

log = logging.getLogger("pgwarden.agent")


def fresh_position(pg: PostgresController, name: str, timeout: float) -> PeerReading:
    """Our PostgreSQL's position now; `running=False` when it does not answer within `timeout`."""
    try:
        h = pg.fresh_health(timeout)
    except Exception as e:  # any failure reads as "not answering": the peer cannot count on us
        log.debug("fresh position unavailable: %s", e)
        return PeerReading(name, reachable=True, running=False)
    return PeerReading(
        name=name, reachable=True, role=Role.REPLICA if h.in_recovery else Role.PRIMARY,
        running=True, timeline=h.timeline, received_lsn=h.received_lsn,
        replayed_lsn=h.replayed_lsn, lsn=h.lsn,
    )


def looks_behind_the_leader(pgv: PgView, view: ClusterView | None, me: str) -> bool:
    """A running replica whose position, read before this loop's store read, is below the position
    the leader published (which may have been published after our reading). Publishing it as it is
    showed a streaming replica one WAL segment behind for a loop right after `local up` (the
    leader's backup-end segment switch): read our position again, after the store read, first."""
    if not (pgv.running and pgv.in_recovery is True) or view is None or view.leader is None or \
            view.leader.name == me:
        return False
    lead = leader_position(view)
    ours = max((v for v in (pgv.received_lsn, pgv.replayed_lsn) if v is not None), default=None)
    return lead is not None and ours is not None and ours < lead


def with_fresh_position(pgv: PgView, fresh: PgView) -> PgView:
    """`pgv` with the positions of a later reading of the same server (same timeline, still a
    replica); unchanged otherwise."""
    if not (fresh.running and fresh.in_recovery is True and fresh.timeline == pgv.timeline):
        return pgv
    return replace(pgv, lsn=fresh.lsn, received_lsn=fresh.received_lsn, replayed_lsn=fresh.replayed_lsn)


class SharedReading:
    """GET /position is open (peers read it without credentials) and each reading opens a
    PostgreSQL connection, so concurrent callers share readings: at most one runs at a time, and a
    caller is answered with the first reading that *started after it asked*, never an older one
    (a cached reading taken before the lease ran out could miss commits acknowledged under it).
    A caller that arrives while a reading runs waits for it to end and then for the next one,
    which it shares with everyone else who arrived meanwhile; so N concurrent callers cost at most
    two readings' time and two connections in a row, never N connections at once.
    """

    def __init__(self, read: Callable[[float], PeerReading], name: str) -> None:
        self._read = read
        self._name = name
        self._cond = threading.Condition()
        self._started = 0  # readings started so far; a reading is known by its number
        self._running = False
        self._last: tuple[int, PeerReading] | None = None  # the last finished reading and its number

    def read(self, timeout: float) -> PeerReading:
        """A reading started after this call began; `running=False` if none finishes in time."""
        deadline = time.monotonic() + timeout
        with self._cond:
            asked_after = self._started  # only readings numbered above this one will do
            while True:
                if self._last is not None and self._last[0] > asked_after:
                    return self._last[1]
                if not self._running:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return PeerReading(self._name, reachable=True, running=False)
                self._cond.wait(remaining)
            self._running = True
            self._started += 1
            number = self._started
        reading = PeerReading(self._name, reachable=True, running=False)
        try:
            reading = self._read(max(deadline - time.monotonic(), 0.05))
        finally:
            with self._cond:
                self._running = False
                self._last = (number, reading)
                self._cond.notify_all()
        return reading
