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

from pgwarden.core.model import PeerReading, Role
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
