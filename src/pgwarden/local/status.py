"""What `pgwarden local status` and `local dsn` report: a row per member (from the store, or from
the agents' REST APIs while it is down), the other components, and a libpq connection string."""

from __future__ import annotations

from typing import Any

import urllib3

from pgwarden.config.schema import ClusterSettings, NodeConfig
from pgwarden.core.model import ClusterView, LeaderKey, MemberInfo, Role, Tags
from pgwarden.errors import CliError
from pgwarden.local import procs
from pgwarden.local.etcd import etcd_answers
from pgwarden.local.handle import ClusterHandle, node_file
from pgwarden.local.layout import LOOPBACK
from pgwarden.procinfo import stopped
from pgwarden.report import libpq_dsn, member_row, ssl_options, stopped_row
from pgwarden.tls.http import api_pool


def member_rows(cluster: ClusterHandle) -> list[dict[str, Any]]:
    """Every node of the state file (stopped ones as "stopped"), then any other member the
    store knows; read from the store, or from each agent's REST API when the store is down."""
    state = cluster.current_state()
    view = cluster.view(0) if cluster.store_reachable_maybe() else None
    statuses: dict[str, MemberInfo] = {}
    rows: list[dict[str, Any]] = []
    agents = state.agents()
    configs = {r.name: node_file(r) for r in agents}
    if view is None:
        for rec in agents:
            cfg = configs[rec.name]
            if cfg is not None and procs.is_ours(rec.pid, rec.marker):
                info = _fetch_status(cfg)
                if info is not None:
                    statuses[rec.name] = info
        view = _view_from_statuses(statuses)
    for rec in agents:
        cfg = configs[rec.name]
        host, port = (cfg.postgresql.connect_host_port() if cfg
                      else (LOOPBACK, rec.ports.get("postgresql", 0)))
        api = cfg.restapi.url() if cfg else f"http://{LOOPBACK}:{rec.ports.get('restapi', 0)}"
        tags = Tags.from_dict(cfg.tags.as_dict()) if cfg else None
        if not procs.is_ours(rec.pid, rec.marker):
            rows.append(stopped_row(rec.name, host, port, api, tags))
        elif rec.name in view.members:
            rows.append(member_row(view, view.members[rec.name]))
        else:
            row = stopped_row(rec.name, host, port, api, tags)
            row["state"] = "starting"  # the agent runs but publishes nothing yet
            rows.append(row)
    for name in sorted(set(view.members) - {r.name for r in agents}):
        rows.append(member_row(view, view.members[name]))
    return rows


def components_summary(cluster: ClusterHandle) -> list[str]:
    out = []
    for rec in cluster.current_state().procs.values():
        if rec.kind == "agent":
            continue
        up = procs.is_ours(rec.pid, rec.marker)
        ports = ", ".join(f"{k} {LOOPBACK}:{v}" for k, v in rec.ports.items())
        if not up:
            what = "stopped"
        elif rec.pid is not None and stopped(rec.pid):
            what = f"frozen (pid {rec.pid} is stopped by a signal: SIGCONT resumes it)"
        elif rec.kind == "etcd" and not etcd_answers(rec):
            what = f"running (pid {rec.pid}) but not answering its health check"
        else:
            what = f"running (pid {rec.pid})"
        out.append(f"{rec.name}: {what}; {ports}")
    return out


def dsn(cluster: ClusterHandle, replicas: bool = False) -> str:
    agents = cluster.current_state().agents()
    hosts: list[tuple[str, int]] = []
    cfg: NodeConfig | None = None
    for rec in agents:
        c = node_file(rec)
        if c is None:
            continue
        cfg = cfg or c
        hosts.append(c.postgresql.connect_host_port())
    if cfg is None:
        raise CliError(f"no readable node file under {cluster.directory}")
    su = cfg.postgresql.superuser
    try:
        password = su.secret()
    except ValueError as e:
        raise CliError(str(e)) from None
    return libpq_dsn(hosts, su.username, password, replicas=replicas, ssl=ssl_options(cfg.postgresql.tls))


def _fetch_status(cfg: NodeConfig) -> MemberInfo | None:
    http = api_pool(cfg.restapi.client_tls(), retries=False, timeout=urllib3.Timeout(1.0))
    try:
        resp = http.request("GET", cfg.restapi.url() + "/status")
        if resp.status != 200:
            return None
        d = resp.json()
    except (urllib3.exceptions.HTTPError, ValueError):
        return None
    if not isinstance(d, dict):
        return None
    host, port = cfg.postgresql.connect_host_port()
    d = {"host": host, "port": port, "api_url": cfg.restapi.url(), **d, "name": cfg.name}
    try:
        return MemberInfo.from_dict(d)
    except (ValueError, TypeError, KeyError):
        return None


def _view_from_statuses(statuses: dict[str, MemberInfo]) -> ClusterView:
    """A stand-in snapshot while the store is down: the self-declared primary as leader, so lag
    can still be computed."""
    primaries = [m.name for m in statuses.values() if m.role == Role.PRIMARY]
    leader = LeaderKey(primaries[0], "") if len(primaries) == 1 else None
    return ClusterView(
        initialized=None, init_holder=None, settings=ClusterSettings(), settings_token="",
        leader=leader, members=statuses, sync=None, failover=None,
    )
