"""What the logical gate may let a subscriber see (SAFETY rule 19 on PostgreSQL 15 and 16): the
position the source primary would acknowledge a synchronous commit at, from what it enforces now.

A logical walsender sends a transaction once the primary has flushed it locally. On PostgreSQL
15 and 16 nothing holds it back until the synchronous standbys have it, so a subscriber can
apply a transaction that a failover then loses (docs/logical-replication.md, "The asynchronous
window"). The gate (`pgwarden.gate`) holds every message of the stream until this position has
reached it.

The position is the one at which the server itself releases a waiting commit, read the way
pgwarden's promotion rules read the synchronous configuration: `synchronous_standby_names` as
ANY `quorum` of `members` (postgres/sync_names.py). A commit at or below it is on `quorum` of
the members, which is exactly what every acknowledged commit is known to satisfy and what the
promotion rules (7, 9, 10) keep through a failover. FIRST k is read as ANY k there; the k-th
highest flush among the listed standbys is at least what FIRST k acknowledges, and no less safe,
since the rules never rely on which k acknowledged.

With no synchronous standby configured, the server acknowledges at its local flush and so does
the gate: in asynchronous mode the window is the same as the one that loses acknowledged
commits, and a gate changes nothing there.
"""

from __future__ import annotations

from collections.abc import Iterable

from pgwarden.core.model import ReplicationStat, SyncConfig
from pgwarden.core.sync import WILDCARD

# The gate sends this ParameterStatus to its clients (`logical subscribe` looks for it).
GATE_PARAMETER = "pgwarden_logical_gate"


def confirmed_lsn(sync: SyncConfig, replication: Iterable[ReplicationStat],
                  local_flush: int | None, in_recovery: bool) -> int | None:
    """The highest position every acknowledged-alike commit reaches, or None while nothing is
    (a standby, or fewer streaming members of the synchronous set than its quorum)."""
    if in_recovery or local_flush is None:
        return None
    if sync.empty:
        return local_flush
    flushes = sorted(
        (r.flush_lsn for r in replication
         if r.flush_lsn is not None and r.state == "streaming"
         and (WILDCARD in sync.members or r.name in sync.members)),
        reverse=True,
    )
    if len(flushes) < sync.quorum:
        return None
    return min(flushes[sync.quorum - 1], local_flush)
