"""What the status commands report, as plain data: member rows built from a store snapshot (for
`ctl list` and `local status`) and multi-host libpq connection strings. No rich, so `pgwarden local`
uses them without importing the CLI."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from psycopg import Error as PsycopgError
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgwarden.config.tls import TlsFiles
from pgwarden.core.model import ClusterView, MemberInfo, Role, Tags
from pgwarden.errors import CliError

# Keys of one member in `ctl list --format json` and `local status --format json`.
MEMBER_KEYS = ("name", "role", "state", "host", "port", "api_url", "timeline", "lag", "streaming", "sync",
               "tags")


def leader_lsn(view: ClusterView) -> int | None:
    """The leader's position: its published member LSN, else the last optime it stored."""
    if view.leader is not None:
        m = view.members.get(view.leader.name)
        if m is not None and m.lsn is not None:
            return m.lsn
    return view.leader_lsn


def member_role(view: ClusterView, m: MemberInfo) -> str:
    """The lease holder is the primary (or the standby leader of a standby cluster); everyone
    else is shown as it describes itself, so a second self-declared primary stays visible."""
    if view.leader is not None and view.leader.name == m.name:
        return Role.STANDBY_LEADER.value if m.role == Role.STANDBY_LEADER else Role.PRIMARY.value
    return m.role.value


def member_lag(view: ClusterView, m: MemberInfo) -> int | None:
    top = leader_lsn(view)
    if top is None or m.lsn is None:
        return None
    # A replica may publish a received LSN newer than the leader's last published one.
    return max(0, top - m.lsn)


def member_sync(view: ClusterView, m: MemberInfo) -> str | None:
    """"sync" or "quorum" for a member of the store's synchronous set (the replicas that hold
    every acknowledged commit, or a quorum of them), None otherwise."""
    if view.sync is None or not view.settings.synchronous or m.name not in view.sync.members:
        return None
    if view.leader is not None and view.leader.name == m.name:
        return None
    return "quorum" if view.settings.synchronous_mode.value == "quorum" else "sync"


def member_row(view: ClusterView, m: MemberInfo) -> dict[str, Any]:
    return {
        "name": m.name,
        "role": member_role(view, m),
        "state": m.state,
        "host": m.host,
        "port": m.port,
        "api_url": m.api_url,
        "timeline": m.timeline,
        "lag": member_lag(view, m),
        "streaming": m.streaming,
        "sync": member_sync(view, m),
        "tags": m.tags.to_dict(),
    }


def member_rows(view: ClusterView) -> list[dict[str, Any]]:
    """One row per published member, leader first, then by name."""
    leader = view.leader.name if view.leader else None
    ordered = sorted(view.members.values(), key=lambda m: (m.name != leader, m.name))
    return [member_row(view, m) for m in ordered]


def stopped_row(name: str, host: str, port: int, api_url: str, tags: Tags | None = None) -> dict[str, Any]:
    """A member that publishes nothing (its agent is down): shown, not hidden."""
    return {
        "name": name,
        "role": Role.UNKNOWN.value,
        "state": "stopped",
        "host": host,
        "port": port,
        "api_url": api_url,
        "timeline": None,
        "lag": None,
        "streaming": False,
        "sync": None,
        "tags": (tags or Tags()).to_dict(),
    }


def redact(dsn: str) -> str:
    """The connection string without its password, for messages, status and the REST API."""
    try:
        d: dict[str, Any] = dict(conninfo_to_dict(dsn))
    except PsycopgError:
        return "(unparsable connection string)"
    if "password" in d:
        d["password"] = "***"
    return make_conninfo(**d)


def libpq_dsn(
    hosts: Sequence[tuple[str, int]],
    user: str,
    password: str,
    replicas: bool = False,
    dbname: str = "postgres",
    ssl: Mapping[str, str] | None = None,
) -> str:
    """A multi-host URI: libpq tries the hosts in order and keeps the first that matches
    `target_session_attrs`, so it reaches the primary (or, with `replicas`, a standby when one
    is up) wherever it runs now. `ssl`: sslmode and sslrootcert (see `ssl_options`)."""
    if not hosts:
        raise CliError("no members known to build a connection string from")
    auth = quote(user, safe="")
    if password:
        auth += ":" + quote(password, safe="")
    where = ",".join(f"{h}:{p}" for h, p in hosts)
    attrs = "prefer-standby" if replicas else "read-write"
    db = quote(dbname, safe="")
    extra = "".join(f"&{k}={quote(v, safe='/')}" for k, v in (ssl or {}).items())
    return f"postgresql://{auth}@{where}/{db}?target_session_attrs={attrs}&connect_timeout=2{extra}"


def ssl_options(tls: TlsFiles | None) -> dict[str, str]:
    """What a client of a cluster with postgresql.tls adds: verify-full against the node file's
    CA (require without one), nothing without TLS."""
    if tls is None:
        return {}
    if tls.cafile is None:
        return {"sslmode": "require"}
    return {"sslmode": "verify-full", "sslrootcert": str(tls.cafile.absolute())}
