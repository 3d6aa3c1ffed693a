"""Patroni-compatible health checks as one pure function of (path, query, NodeState, now), so HAProxy
configs and Kubernetes probes written for Patroni work unchanged. All the rules are in this file.

Where Patroni's documentation and code differ we follow the code (it is what probes were tested
against); the deliberate differences are marked "pgwarden:" below.
"""

from __future__ import annotations

from collections.abc import Mapping

from pgwarden.api.lag import parse_lag
from pgwarden.api.state import NodeState
from pgwarden.config.schema import SyncMode
from pgwarden.core.model import ClusterView, MemberInfo, Role

PRIMARY_PATHS = frozenset({"/", "/primary", "/master", "/read-write"})
STANDBY_LEADER_PATHS = frozenset({"/standby-leader", "/standby_leader"})
LEADER_PATHS = frozenset({"/leader"})
REPLICA_PATHS = frozenset({"/replica"})
READ_ONLY_PATHS = frozenset({"/read-only"})
SYNC_PATHS = frozenset({"/sync", "/synchronous"})
READ_ONLY_SYNC_PATHS = frozenset({"/read-only-sync", "/read-only-synchronous"})
QUORUM_PATHS = frozenset({"/quorum"})
READ_ONLY_QUORUM_PATHS = frozenset({"/read-only-quorum"})
ASYNC_PATHS = frozenset({"/async", "/asynchronous"})

HEALTH_PATHS: frozenset[str] = (
    PRIMARY_PATHS | STANDBY_LEADER_PATHS | LEADER_PATHS | REPLICA_PATHS | READ_ONLY_PATHS
    | SYNC_PATHS | READ_ONLY_SYNC_PATHS | QUORUM_PATHS | READ_ONLY_QUORUM_PATHS | ASYNC_PATHS
    | {"/health", "/liveness", "/readiness"}
)

# Endpoints that ask "is this the writer?": tag filters don't apply (as in Patroni).
_LEADER_KINDS = PRIMARY_PATHS | STANDBY_LEADER_PATHS | LEADER_PATHS

DEFAULT_TTL = 4.0
OK = 200
UNAVAILABLE = 503


class BadRequest(ValueError):
    """A query parameter cannot be understood (the server answers 400 with this message)."""


# -- readings shared with the server's JSON -----------------------------------------------------


def pg_running(m: MemberInfo) -> bool:
    """PostgreSQL is up and serving ('running' in Patroni's state vocabulary)."""
    return m.running and m.state == "running"


def leader_position(view: ClusterView) -> int | None:
    """The newest LSN the leader is known to have: its published optime or its member key."""
    known: list[int] = []
    if view.leader_lsn is not None:
        known.append(view.leader_lsn)
    if view.leader is not None:
        lm = view.members.get(view.leader.name)
        if lm is not None and lm.lsn is not None:
            known.append(lm.lsn)
    return max(known) if known else None


def member_position(m: MemberInfo, mode: str | None = None) -> int | None:
    """How far a replica has WAL: `write` = received, `apply` = replayed, default the max of both."""
    if mode == "write":
        return m.received_lsn
    if mode == "apply":
        return m.replayed_lsn
    known = [v for v in (m.received_lsn, m.replayed_lsn) if v is not None]
    if known:
        return max(known)
    return m.lsn


def member_lag(m: MemberInfo, view: ClusterView | None, mode: str | None = None) -> int | None:
    """Bytes `m` is behind the leader; None when either end is unknown."""
    if view is None:
        return None
    lead = leader_position(view)
    pos = member_position(m, mode)
    if lead is None or pos is None:
        return None
    return max(0, lead - pos)


def sync_flags(st: NodeState) -> tuple[bool, bool]:
    """(synchronous standby, quorum voter) according to the store's sync set, as Patroni does:
    membership counts as 'sync' in synchronous_mode on and as 'quorum' in quorum mode."""
    view = st.cluster
    if view is None or view.sync is None or st.member.name not in view.sync.members:
        return False, False
    if st.member.role != Role.REPLICA:
        return False, False
    mode = view.settings.synchronous_mode
    return mode == SyncMode.ON, mode == SyncMode.QUORUM


# -- the checks -----------------------------------------------------------------------------------


def _lag_limit(query: Mapping[str, str]) -> int | None:
    raw = query.get("lag")
    if raw is None:
        return None
    try:
        return parse_lag(raw)
    except ValueError as e:
        raise BadRequest(str(e)) from None


def _tags_match(st: NodeState, query: Mapping[str, str]) -> bool:
    """`?tag_NAME=value`: the node's tag NAME must exist (not null) and equal value. Compared as
    strings, case-insensitively; booleans read as true/false."""
    tags = st.member.tags.to_dict()
    for key, wanted in query.items():
        if not key.startswith("tag_"):
            continue
        have = tags.get(key[len("tag_"):])
        if have is None:
            return False
        text = have if isinstance(have, str) else str(have).lower()
        if text.lower() != wanted.lower():
            return False
    return True


def _liveness(st: NodeState, now: float) -> bool:
    view = st.cluster
    if view is not None and view.settings.paused:
        return True  # Patroni: in maintenance mode a stuck loop must not get the pod killed
    ttl = view.settings.ttl if view is not None else DEFAULT_TTL
    # A primary's loop stalling matters once its lease could run out; replicas get twice as long.
    is_primary = st.member.role == Role.PRIMARY and pg_running(st.member)
    threshold = ttl if is_primary else 2 * ttl
    return now - st.last_loop_at <= threshold


def _readiness(st: NodeState, query: Mapping[str, str], limit: int | None) -> bool:
    mode = query.get("mode")
    if mode not in (None, "apply", "write"):
        raise BadRequest(f"invalid mode '{mode}': use apply or write")
    m = st.member
    if st.holds_lease and pg_running(m):
        return True
    if not (pg_running(m) and m.role == Role.REPLICA) or st.cluster is None:
        return False
    lag = member_lag(m, st.cluster, mode)
    if lag is None:
        return False  # not (yet) replicating, or the leader's position is unknown
    # Patroni: without ?lag the cluster's maximum_lag_on_failover is the limit.
    return lag <= (limit if limit is not None else st.cluster.settings.maximum_lag_on_failover)


def health_status(path: str, query: Mapping[str, str], st: NodeState, now: float) -> int:
    """200 or 503 for a health path (one of HEALTH_PATHS); `now` is monotonic like last_loop_at.
    Raises BadRequest for a query value that cannot be parsed."""
    if path not in HEALTH_PATHS:
        raise ValueError(f"not a health path: {path}")
    limit = _lag_limit(query)
    m = st.member
    running = pg_running(m)

    if path == "/liveness":
        return OK if _liveness(st, now) else UNAVAILABLE
    if path == "/readiness":
        return OK if _readiness(st, query, limit) else UNAVAILABLE
    if path == "/health":
        return OK if running else UNAVAILABLE

    view = st.cluster
    paused = view is not None and view.settings.paused
    if not st.store_ok and paused:
        # Patroni: in maintenance mode nobody demotes on store loss, so the role is the truth.
        leader = running and m.role in (Role.PRIMARY, Role.STANDBY_LEADER)
    else:
        leader = st.holds_lease
    primary_ok = leader and running and m.role == Role.PRIMARY
    standby_leader_ok = leader and running and m.role == Role.STANDBY_LEADER
    writer_ok = primary_ok or standby_leader_ok

    lag_ok = True
    if limit is not None:
        lag = member_lag(m, view)
        # pgwarden: an unknown lag fails the check (Patroni treats an unknown leader LSN as 0).
        lag_ok = lag is not None and lag <= limit
    replica_ok = running and m.role == Role.REPLICA and not m.tags.noloadbalance and lag_ok
    is_sync, is_quorum = sync_flags(st)

    if path in STANDBY_LEADER_PATHS:
        ok = standby_leader_ok
    elif path in LEADER_PATHS:
        ok = leader
    elif path in PRIMARY_PATHS:
        ok = primary_ok
    elif path in REPLICA_PATHS:
        ok = replica_ok
    elif path in READ_ONLY_PATHS:
        ok = writer_ok or replica_ok
    elif view is None:
        ok = False  # the sync family needs the store's sync set
    elif path in SYNC_PATHS:
        ok = is_sync and replica_ok
    elif path in QUORUM_PATHS:
        ok = is_quorum and replica_ok
    elif path in ASYNC_PATHS:
        ok = not is_sync and not is_quorum and replica_ok
    elif path in READ_ONLY_SYNC_PATHS:
        ok = writer_ok or (is_sync and replica_ok)
    else:  # READ_ONLY_QUORUM_PATHS
        ok = writer_ok or (is_quorum and replica_ok)

    if ok and path not in _LEADER_KINDS and not _tags_match(st, query):
        ok = False
    return OK if ok else UNAVAILABLE
