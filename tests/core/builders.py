"""Terse builders for the HA core's observations: a primary, a replica, a cluster view with its
leader key, members, peers, synchronous state and history. Every builder takes keyword overrides
so a test names only what it is about."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pgwarden.config.schema import ClusterSettings
from pgwarden.core.actions import Upstream
from pgwarden.core.model import (
    ClusterView,
    DataState,
    FailoverRequest,
    HistoryEntry,
    LeaderKey,
    Lease,
    Me,
    MemberInfo,
    Observation,
    PeerReading,
    PgView,
    ReplicationStat,
    Role,
    SyncConfig,
    SyncState,
    Tags,
)

SYSID = "7300000000000000001"
NOW = 1000.0
WALL = 1_700_000_000.0


def settings(**kw: Any) -> ClusterSettings:
    return ClusterSettings(**kw)


def me(name: str = "n1", **tags: Any) -> Me:
    return Me(name=name, tags=Tags(**tags), host=f"{name}.local", port=5432, api_url=f"http://{name}:8008")


def primary_pg(**kw: Any) -> PgView:
    base: dict[str, Any] = dict(
        data=DataState.VALID, running=True, healthy=True, in_recovery=False, system_id=SYSID,
        timeline=1, lsn=1000, streaming=False,
    )
    base.update(kw)
    return PgView(**base)


def replica_pg(upstream: str | None = "n1", **kw: Any) -> PgView:
    base: dict[str, Any] = dict(
        data=DataState.VALID, running=True, healthy=True, in_recovery=True, system_id=SYSID,
        timeline=1, lsn=1000, received_lsn=1000, replayed_lsn=1000, upstream=upstream,
        streaming=upstream is not None,
    )
    base.update(kw)
    return PgView(**base)


def stopped_pg(**kw: Any) -> PgView:
    base: dict[str, Any] = dict(
        data=DataState.VALID, running=False, healthy=False, in_recovery=None, system_id=SYSID,
        timeline=1, checkpoint_lsn=1000, was_primary=False, clean_shutdown=True,
    )
    base.update(kw)
    return PgView(**base)


def empty_pg() -> PgView:
    return PgView(data=DataState.EMPTY)


def member(name: str, role: Role = Role.REPLICA, **kw: Any) -> MemberInfo:
    base: dict[str, Any] = dict(
        name=name, api_url=f"http://{name}:8008", host=f"{name}.local", port=5432, role=role,
        state="running", running=True, timeline=1, lsn=1000,
    )
    if "tags" in kw and isinstance(kw["tags"], Mapping):
        kw["tags"] = Tags(**kw["tags"])
    base.update(kw)
    return MemberInfo(**base)


def members(*ms: MemberInfo) -> dict[str, MemberInfo]:
    return {m.name: m for m in ms}


def peer(name: str, lsn: int | None = 1000, role: Role = Role.REPLICA, **kw: Any) -> PeerReading:
    base: dict[str, Any] = dict(
        name=name, reachable=True, role=role, running=True, timeline=1,
        received_lsn=lsn, replayed_lsn=lsn, lsn=lsn,
    )
    base.update(kw)
    return PeerReading(**base)


def peers(*ps: PeerReading) -> dict[str, PeerReading]:
    return {p.name: p for p in ps}


def sync_state(leader: str | None, *names: str, quorum: int | None = None) -> SyncState:
    return SyncState(leader, frozenset(names), len(names) if quorum is None else quorum, token="s1")


def sync_config(quorum: int, *names: str) -> SyncConfig:
    return SyncConfig(quorum, frozenset(names))


def stat(name: str, flush: int | None, state: str = "streaming",
         sync_state: str = "async") -> ReplicationStat:
    return ReplicationStat(name=name, state=state, sync_state=sync_state, flush_lsn=flush)


def history(*entries: tuple[int, int]) -> tuple[HistoryEntry, ...]:
    return tuple(HistoryEntry(timeline=t, switch_lsn=lsn, reason="promoted") for t, lsn in entries)


def switchover(leader: str | None, candidate: str | None, at: float | None = None,
               kind: str = "switchover") -> FailoverRequest:
    return FailoverRequest(kind=kind, leader=leader, candidate=candidate, scheduled_at=at, token="f1")


def view(
    leader: str | None = "n1",
    ms: Iterable[MemberInfo] | None = None,
    *,
    cluster: ClusterSettings | None = None,
    sync: SyncState | None = None,
    failover: FailoverRequest | None = None,
    hist: tuple[HistoryEntry, ...] = (),
    leader_lsn: int | None = None,
    initialized: str | None = SYSID,
    init_holder: str | None = None,
) -> ClusterView:
    if ms is None:
        ms = [member("n1", Role.PRIMARY), member("n2"), member("n3")]
    return ClusterView(
        initialized=initialized,
        init_holder=init_holder,
        settings=cluster or ClusterSettings(),
        settings_token="c1",
        leader=LeaderKey(leader, token="l1") if leader else None,
        members=members(*ms),
        sync=sync,
        failover=failover,
        history=hist,
        leader_lsn=leader_lsn,
    )


def obs(
    name: str = "n1",
    pg: PgView | None = None,
    store: ClusterView | None = None,
    *,
    held: bool = False,
    deadline: float | None = None,
    now: float = NOW,
    wall: float = WALL,
    ps: Mapping[str, PeerReading] | None = None,
    tags: Mapping[str, Any] | None = None,
    cluster: ClusterSettings | None = None,
    unreachable: bool = False,
) -> Observation:
    """An observation by `name`. `held` with no deadline means a fresh lease (renewed just now)."""
    s = store if store is not None else view()
    if deadline is None:
        deadline = now + s.settings.ttl - 0.5 if held else 0.0
    return Observation(
        now=now,
        wall=wall,
        me=me(name, **(tags or {})),
        pg=pg or (primary_pg() if name == "n1" else replica_pg()),
        store=None if unreachable else s,
        lease=Lease(held, deadline),
        peers=dict(ps or {}),
        settings=cluster or s.settings,
    )


def leader_obs(pg: PgView | None = None, store: ClusterView | None = None, **kw: Any) -> Observation:
    """n1 holding the lease as leader."""
    return obs("n1", pg or primary_pg(), store or view("n1"), held=True, **kw)


def kinds(decision_actions: Iterable[object]) -> list[str]:
    return [type(a).__name__ for a in decision_actions]


# Where the builders' members stream from (member(name) publishes host f"{name}.local", port 5432).
UP_N1 = Upstream("n1", "n1.local", 5432)
UP_N2 = Upstream("n2", "n2.local", 5432)
UP_N3 = Upstream("n3", "n3.local", 5432)
