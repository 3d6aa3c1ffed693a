"""Builders for MemberInfo / ClusterView / NodeState used by the API tests: a three-node cluster
where node1 leads, node2 is caught up and node3 is 64 MB behind."""

from __future__ import annotations

from collections.abc import Iterable

from pgwarden.api.state import NodeState
from pgwarden.config.schema import ClusterSettings, SyncMode
from pgwarden.core.model import (
    ClusterView,
    FailoverRequest,
    HistoryEntry,
    LeaderKey,
    MemberInfo,
    Role,
    SyncState,
    Tags,
)

MB = 1024 * 1024
LEADER_LSN = 0x3000060
NOW = 1000.0  # monotonic "now" the health tests use


def member(
    name: str,
    role: Role = Role.REPLICA,
    *,
    running: bool = True,
    state: str = "running",
    lsn: int | None = None,
    received: int | None = None,
    replayed: int | None = None,
    tags: Tags | None = None,
    pending_restart: bool = False,
) -> MemberInfo:
    if role == Role.REPLICA and lsn is None:
        known = [v for v in (received, replayed) if v is not None]
        lsn = max(known) if known else None
    return MemberInfo(
        name=name, api_url=f"http://127.0.0.1:80{name[-1]}", host="127.0.0.1", port=5432,
        role=role, state=state, running=running, timeline=1, lsn=lsn, received_lsn=received,
        replayed_lsn=replayed, upstream=None if role != Role.REPLICA else "node1",
        tags=tags or Tags(), agent_pid=100, postmaster_pid=200, version="0.1.0",
        pg_version=170000, pending_restart=pending_restart,
    )


PRIMARY = member("node1", Role.PRIMARY, lsn=LEADER_LSN)
CAUGHT_UP = member("node2", received=LEADER_LSN, replayed=LEADER_LSN - 0x60)
LAGGING = member("node3", received=LEADER_LSN - 64 * MB, replayed=LEADER_LSN - 64 * MB)


def view(
    members: Iterable[MemberInfo] = (PRIMARY, CAUGHT_UP, LAGGING),
    leader: str | None = "node1",
    *,
    leader_lsn: int | None = LEADER_LSN,
    mode: SyncMode = SyncMode.OFF,
    sync_members: Iterable[str] = (),
    quorum: int = 1,
    paused: bool = False,
    ttl: float = 4.0,
    failover: FailoverRequest | None = None,
    history: tuple[HistoryEntry, ...] = (),
) -> ClusterView:
    sync_set = frozenset(sync_members)
    return ClusterView(
        initialized="7000000000000000001",
        init_holder=None,
        settings=ClusterSettings(synchronous_mode=mode, paused=paused, ttl=ttl),
        settings_token="1",
        leader=LeaderKey(leader, "7") if leader else None,
        members={m.name: m for m in members},
        sync=SyncState(leader, sync_set, quorum if sync_set else 0, "3") if sync_set or mode != SyncMode.OFF
        else None,
        failover=failover,
        history=history,
        leader_lsn=leader_lsn,
    )


def node(
    me: MemberInfo,
    cluster: ClusterView | None = None,
    *,
    holds_lease: bool | None = None,
    store_ok: bool = True,
    last_loop_at: float = NOW - 0.5,
) -> NodeState:
    """`cluster` defaults to the standard view; the lease follows its leader key unless given."""
    if cluster is None:
        cluster = view()
    if holds_lease is None:
        holds_lease = cluster.leader is not None and cluster.leader.name == me.name
    return NodeState(member=me, cluster=cluster, store_ok=store_ok, holds_lease=holds_lease,
                     last_loop_at=last_loop_at, started_at=1_700_000_000.0)


def node_without_store(me: MemberInfo, last_loop_at: float = NOW - 0.5) -> NodeState:
    return NodeState(member=me, cluster=None, store_ok=False, holds_lease=False,
                     last_loop_at=last_loop_at, started_at=1_700_000_000.0)
