"""The JSON documents the API serves (status, cluster, history, settings, failover request), built
from the agent's NodeState and the store's ClusterView; pure functions, no I/O."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pgwarden.api.health import member_lag, sync_flags
from pgwarden.api.state import NodeState
from pgwarden.config.load import to_data
from pgwarden.config.schema import ClusterSettings
from pgwarden.core.model import ClusterView, FailoverRequest, MemberInfo, Role, int_to_lsn
from pgwarden.core.slot_copies import missing_copies
from pgwarden.report import redact


def iso_time(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, UTC).isoformat()


def _is_leader(m: MemberInfo, view: ClusterView | None) -> bool:
    return view is not None and view.leader is not None and view.leader.name == m.name


def status_json(st: NodeState, cluster_name: str | None) -> dict[str, Any]:
    """GET /status (and the body of every health check): this node as the agent last saw it.
    Carries Patroni's key names too (xlog, server_version, patroni, pause) for its tooling."""
    m = st.member
    view = st.cluster
    paused = view is not None and view.settings.paused
    is_sync, is_quorum = sync_flags(st)
    lag = None if (st.holds_lease or _is_leader(m, view)) else member_lag(m, view)
    if m.role == Role.PRIMARY:
        xlog: dict[str, Any] = {"location": m.lsn}
    else:
        xlog = {"received_location": m.received_lsn, "replayed_location": m.replayed_lsn}
    return {
        "name": m.name,
        "cluster": cluster_name,
        "role": m.role.value,
        "state": m.state,
        "running": m.running,
        "timeline": m.timeline,
        "lsn": m.lsn,
        "lsn_text": int_to_lsn(m.lsn),
        "received_lsn": m.received_lsn,
        "replayed_lsn": m.replayed_lsn,
        "lag": lag,
        "upstream": m.upstream,
        "replication_state": "streaming" if m.streaming else None,
        "holds_lease": st.holds_lease,
        "paused": paused,
        "pending_restart": m.pending_restart,
        "sync_standby": is_sync,
        "quorum_standby": is_quorum,
        "synchronous_standby_names": {"quorum": st.pg_sync.quorum, "members": sorted(st.pg_sync.members)},
        "tags": m.tags.to_dict(),
        "agent_pid": m.agent_pid,
        "postmaster_pid": m.postmaster_pid,
        "version": m.version,
        "pg_version": m.pg_version,
        "api_url": m.api_url,
        "store_ok": st.store_ok,
        "message": st.message,
        "start_error": st.start_error or None,
        "postgresql_log": st.pg_log or None,
        "pgbouncer": pgbouncer_json(st),
        "logical_slots": {n: int_to_lsn(lsn) for n, lsn in m.logical_slots},
        "logical_error": st.logical_error,
        # Failover candidates without a copy of a logical slot of the leader (rule 19).
        "logical_slot_copies_missing": missing_copies(view) if view is not None else {},
        "started_at": iso_time(st.started_at),
        "cluster_unlocked": view is None or view.leader is None,
        # Rule 17: the members whose majority the failsafe counts, as the last store read showed.
        "failsafe_members": sorted(view.failsafe_members) if view is not None else [],
        # Patroni's names for the same facts.
        "server_version": m.pg_version,
        "xlog": xlog,
        "pause": paused,
        "patroni": {"version": m.version, "scope": cluster_name, "name": m.name},
    }


def pgbouncer_json(st: NodeState) -> dict[str, Any] | None:
    """The managed PgBouncer as this node's router sees it: its address and databases, and where
    this node keeps it pointed (only the leader points it anywhere), with the member there."""
    r = st.pgbouncer
    if r is None:
        return None
    member = None
    if r.target is not None and st.cluster is not None:
        member = next((m.name for m in st.cluster.members.values() if (m.host, m.port) == r.target), None)
    return {
        "address": r.address,
        "databases": list(r.databases),
        "target": f"{r.target[0]}:{r.target[1]}" if r.target is not None else None,
        "target_member": member,
        "confirmed_at": iso_time(r.confirmed_at),
        "error": r.error.strip().splitlines()[0] if r.error.strip() else None,  # libpq adds hint lines
    }


def settings_json(s: ClusterSettings) -> dict[str, Any]:
    """The settings, with the subscriptions' source passwords left out (as `ctl show-config`)."""
    data = to_data(s)
    for sub in data.get("subscriptions") or ():
        sub["source"] = redact(sub["source"])
    return data


def failover_json(r: FailoverRequest | None) -> dict[str, Any] | None:
    if r is None:
        return None
    return {"kind": r.kind, "leader": r.leader, "candidate": r.candidate,
            "scheduled_at": iso_time(r.scheduled_at)}


def cluster_json(view: ClusterView, cluster_name: str | None) -> dict[str, Any]:
    """GET /cluster: every member as the store has it; the leader shows primary or standby_leader."""
    leader = view.leader.name if view.leader else None
    members: list[dict[str, Any]] = []
    for name in sorted(view.members):
        m = view.members[name]
        role = m.role.value
        if name == leader:
            role = Role.STANDBY_LEADER.value if m.role == Role.STANDBY_LEADER else Role.PRIMARY.value
        members.append({
            "name": name,
            "role": role,
            "state": m.state,
            "running": m.running,
            "host": m.host,
            "port": m.port,
            "api_url": m.api_url,
            "timeline": m.timeline,
            "lsn": m.lsn,
            "lag": None if name == leader else member_lag(m, view),
            "pending_restart": m.pending_restart,
            "tags": m.tags.to_dict(),
        })
    sync = None
    if view.sync is not None:
        sync = {"leader": view.sync.leader, "members": sorted(view.sync.members), "quorum": view.sync.quorum}
    return {
        "scope": cluster_name,
        "members": members,
        "leader": leader,
        "sync": sync,
        "paused": view.settings.paused,
        "settings": settings_json(view.settings),
        "failover": failover_json(view.failover),
    }


def history_json(view: ClusterView) -> list[dict[str, Any]]:
    return [
        {"timeline": e.timeline, "switch_lsn": e.switch_lsn, "switch_lsn_text": int_to_lsn(e.switch_lsn),
         "reason": e.reason, "at": iso_time(e.at), "new_leader": e.new_leader}
        for e in view.history
    ]


def site_dsn(view: ClusterView) -> str:
    """A DSN reaching this site's primary through any of its members (no credentials)."""
    ms = sorted(view.members.values(), key=lambda m: m.name)
    if not ms:
        return ""
    return (f"host={','.join(m.host for m in ms)} port={','.join(str(m.port) for m in ms)} "
            f"target_session_attrs=read-write")


def site_json(st: NodeState, cluster_name: str | None) -> dict[str, Any]:
    """GET /site (open, like /status): what another site's agents read for SAFETY rule 18."""
    view = st.cluster
    sc = view.settings.standby_cluster if view is not None else None
    m = st.member
    return {
        "cluster": cluster_name,
        "member": m.name,
        "epoch": view.site.epoch if view is not None else 0,
        "writable": m.role == Role.PRIMARY and m.running,
        "standby_of": sc.source if sc is not None else None,
        "dsn": site_dsn(view) if view is not None else "",
        "replayed_lsn": m.replayed_lsn,
        "timeline": m.timeline,
    }
