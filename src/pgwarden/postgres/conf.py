"""Render the files pgwarden owns in a data directory: postgresql.conf (entirely ours), pg_hba.conf,
pg_ident.conf and the libpq passfile. Pure functions of their inputs; the controller writes them.

Parameter precedence, lowest first: our defaults, the node's `postgresql.parameters`, the
cluster's `parameters`, then the settings pgwarden must control (ports, files, replication).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgwarden.core.model import NO_SYNC, SyncConfig

ParamValue = str | int | float | bool

DEFAULTS: dict[str, ParamValue] = {
    "wal_level": "replica",
    "hot_standby": "on",
    "max_wal_senders": 10,
    "max_replication_slots": 10,
    "wal_log_hints": "on",
    "wal_keep_size": "128MB",
    "max_connections": 100,
    "full_page_writes": "on",
    "password_encryption": "scram-sha-256",
    # A replica retries its upstream this often (PostgreSQL's default is 5s). A new standby whose
    # slot the leader creates a moment after it starts, or one re-pointed at a new primary, then
    # streams within a second instead of sitting unprotected for five.
    "wal_retrieve_retry_interval": "1s",
}

# Settings pgwarden decides; a user value for them is ignored (see `ignored_parameters`).
CONTROLLED = frozenset({
    "listen_addresses", "port", "hba_file", "ident_file", "unix_socket_directories",
    "synchronous_standby_names", "primary_conninfo", "primary_slot_name",
    "recovery_target_timeline", "data_directory", "config_file", "external_pid_file",
})

STATE_PREFIX = "# pgwarden-state: "
ident_map_name = "pgwarden"


@dataclass(frozen=True)
class Upstream:
    member: str
    host: str
    port: int
    dsn: str = ""  # a standby site's source: a libpq DSN instead of host and port
    slot: str | None = None  # with a DSN: primary_slot_name (None: no slot)


@dataclass(frozen=True)
class ConfState:
    """What we wrote, kept in postgresql.conf's header so a restarted agent knows it too."""

    role: str  # "primary" | "replica"
    upstream: Upstream | None
    sync: SyncConfig
    generation: str

    def to_json(self) -> str:
        d: dict[str, Any] = {
            "role": self.role,
            "upstream": None if self.upstream is None else
            {"member": self.upstream.member, "host": self.upstream.host, "port": self.upstream.port,
             "dsn": self.upstream.dsn, "slot": self.upstream.slot},
            "sync": {"quorum": self.sync.quorum, "members": sorted(self.sync.members)},
            "generation": self.generation,
        }
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ConfState:
        d = json.loads(text)
        up = d.get("upstream")
        s = d.get("sync") or {}
        return cls(
            role=str(d.get("role", "replica")),
            upstream=None if not up else Upstream(str(up["member"]), str(up["host"]), int(up["port"]),
                                                  str(up.get("dsn") or ""), up.get("slot")),
            sync=SyncConfig(int(s.get("quorum", 0)), frozenset(s.get("members", ()))),
            generation=str(d.get("generation", "")),
        )


def read_state(conf_text: str) -> ConfState | None:
    for line in conf_text.splitlines():
        if line.startswith(STATE_PREFIX):
            try:
                return ConfState.from_json(line[len(STATE_PREFIX):])
            except (ValueError, KeyError, TypeError):
                return None
    return None


def slot_name(member: str) -> str:
    """Replication slot name for a member: lowercase [a-z0-9_], at most 63 characters."""
    name = re.sub(r"[^a-z0-9_]", "_", member.lower())
    if len(name) > 63:
        name = name[:63]
    return name or "_"


def quote_value(value: ParamValue) -> str:
    """A value as postgresql.conf wants it: booleans on/off, numbers bare, strings quoted."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int | float):
        return str(value)
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _quote_standby(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def sync_standby_names(sync: SyncConfig) -> str:
    """SyncConfig -> synchronous_standby_names ('' when empty, '*' alone for the wildcard)."""
    if sync.empty:
        return ""
    members = sorted(sync.members)
    if members == ["*"]:
        return "*" if sync.quorum == 1 else f"ANY {sync.quorum} (*)"
    return f"ANY {sync.quorum} ({', '.join(_quote_standby(m) for m in members)})"


def _conninfo_value(value: str) -> str:
    if value and re.fullmatch(r"[A-Za-z0-9_./:@-]+", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def primary_conninfo(
    upstream: Upstream,
    *,
    user: str,
    application_name: str,
    passfile: Path | None = None,
    password: str | None = None,
    ssl: Mapping[str, str] | None = None,
) -> str:
    parts: list[tuple[str, str]]
    if upstream.dsn:
        # A standby site's source: its keys as given (hosts, ports, target_session_attrs, user),
        # ours for what the DSN leaves out; application_name, passfile and keepalives are ours.
        given = conninfo_to_dict(upstream.dsn)
        given.setdefault("user", user)
        ours = {"password", "passfile", "application_name", "connect_timeout", "keepalives",
                "keepalives_idle", "keepalives_interval", "keepalives_count"}
        given.setdefault("dbname", "postgres")
        if "sslmode" not in given:  # no TLS settings of its own: this node's (verify-full, our CA)
            given.update(ssl or {})
        ssl = None
        parts = [(k, str(v)) for k, v in given.items() if k not in ours and v is not None]
    else:
        parts = [
            ("host", upstream.host),
            ("port", str(upstream.port)),
            ("user", user),
            # Ignored by physical replication; PostgreSQL 17's slot-sync worker needs a database.
            ("dbname", "postgres"),
        ]
    if passfile is not None:
        parts.append(("passfile", str(passfile)))
    elif password is not None:
        parts.append(("password", password))
    parts += [
        ("application_name", application_name),
        ("connect_timeout", "2"),
        ("keepalives", "1"),
        ("keepalives_idle", "2"),
        ("keepalives_interval", "1"),
        ("keepalives_count", "3"),
        *(ssl or {}).items(),  # sslmode=verify-full sslrootcert=... (postgres/tls.py)
    ]
    return " ".join(f"{k}={_conninfo_value(v)}" for k, v in parts)


def harden_dsn(dsn: str, major: int | None) -> str:
    """A standby site's source DSN as libpq gets it: `require_auth=scram-sha-256` unless the DSN
    says otherwise (libpq >= 16), so a server the settings point at cannot ask for the password
    in clear text and keep it (the settings are writable through PATCH /config)."""
    d = conninfo_to_dict(dsn)
    if major is None or major < 16 or "require_auth" in d:
        return dsn
    return make_conninfo(dsn, require_auth="scram-sha-256")


def ignored_parameters(*sources: Mapping[str, ParamValue]) -> set[str]:
    return {k for src in sources for k in src if k in CONTROLLED}


def render_postgresql_conf(
    *,
    data_dir: Path,
    listen_address: str,
    port: int,
    member: str,
    node_parameters: Mapping[str, ParamValue],
    cluster_parameters: Mapping[str, ParamValue],
    state: ConfState,
    replication_user: str,
    passfile: Path | None,
    socket_dir: Path | None,
    cluster_name: str | None = None,
    major: int | None = None,
    ssl_parameters: Mapping[str, ParamValue] | None = None,
    upstream_ssl: Mapping[str, str] | None = None,
) -> str:
    """`ssl_parameters` (postgresql.tls: ssl = on and the files) win over the user's; `upstream_ssl`
    are the libpq options of the connection to the upstream."""
    params: dict[str, ParamValue] = dict(DEFAULTS)
    if cluster_name:
        params["cluster_name"] = cluster_name
    for src in (node_parameters, cluster_parameters):
        params.update({k: v for k, v in src.items() if k not in CONTROLLED})
    params.update(ssl_parameters or {})
    params.update({
        "listen_addresses": listen_address,
        "port": port,
        "hba_file": str(data_dir / "pg_hba.conf"),
        "ident_file": str(data_dir / "pg_ident.conf"),
        # None: TCP only (the socket path would exceed the kernel's ~107 byte limit).
        "unix_socket_directories": str(socket_dir) if socket_dir else "",
        "synchronous_standby_names": sync_standby_names(state.sync),
        # A marker the controller reads back to know a reload has taken effect.
        "pgwarden.generation": state.generation,
    })
    if state.role == "replica":
        params["recovery_target_timeline"] = "latest"
        if state.upstream is not None:
            # Streaming from another site: a name no member of that site has, so its primary
            # never counts us as one of its own synchronous standbys.
            up = state.upstream
            app = f"{cluster_name or 'site'}.{member}" if up.dsn else member
            if up.dsn:
                up = replace(up, dsn=harden_dsn(up.dsn, major))
            params["primary_conninfo"] = primary_conninfo(
                # Another site's TLS settings travel in its DSN (sslmode, sslrootcert); a DSN
                # without them (rule 18's, read from GET /site) gets ours: one CA for both sites.
                up, user=replication_user, application_name=app, passfile=passfile, ssl=upstream_ssl,
            )
            params["primary_slot_name"] = (up.slot or "") if up.dsn else slot_name(member)
            if (major or 0) >= 17 and params.get("wal_level") == "logical":
                # A cluster that can publish keeps its failover slots on every standby
                # (PostgreSQL's slot-sync worker needs the feedback and a dbname to connect with).
                params["sync_replication_slots"] = "on"
                params["hot_standby_feedback"] = "on"
        else:
            # Explicitly empty, so a reload drops a stale upstream instead of keeping it.
            params["primary_conninfo"] = ""
            params["primary_slot_name"] = ""
    lines = [
        "# Written by pgwarden; changes here are overwritten. Set parameters in the node's",
        "# postgresql.parameters or the cluster's parameters (pgwarden ctl edit-config).",
        STATE_PREFIX + state.to_json(),
        "",
    ]
    lines += [f"{k} = {quote_value(v)}" for k, v in sorted(params.items())]
    return "\n".join(lines) + "\n"


def render_pg_hba(*, superuser: str, extra: Iterable[str] = (), ssl: bool = False) -> str:
    """Local connections as the superuser use peer auth through our ident map (the agent and
    the OS user); everything else, local or TCP, needs a scram password, and with `ssl` (TLS on)
    TCP connections must also be encrypted (hostssl: an unencrypted one matches no line)."""
    host = "hostssl" if ssl else "host"
    lines = [
        "# Written by pgwarden; add lines through postgresql.pg_hba in the node's config.",
        f"local   all             {superuser:<15} peer map={ident_map_name}",
        f"local   replication     {superuser:<15} peer map={ident_map_name}",
        *extra,
        "local   all             all             scram-sha-256",
        "local   replication     all             scram-sha-256",
    ]
    for net in ("127.0.0.1/32", "::1/128", "0.0.0.0/0", "::/0"):
        lines.append(f"{host:<7} all             all             {net:<23} scram-sha-256")
        lines.append(f"{host:<7} replication     all             {net:<23} scram-sha-256")
    return "\n".join(lines) + "\n"


def render_pg_ident(*, os_users: Iterable[str], superuser: str) -> str:
    lines = ["# Written by pgwarden: OS users allowed to connect locally as the superuser."]
    for u in sorted(set(os_users)):
        lines.append(f"{ident_map_name}   {u:<15} {superuser}")
    return "\n".join(lines) + "\n"


def _pgpass_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


def render_passfile(entries: Iterable[tuple[str, str]]) -> str:
    """libpq passfile lines matching any host, port and database for each (user, password)."""
    return "".join(f"*:*:*:{_pgpass_escape(u)}:{_pgpass_escape(p)}\n" for u, p in entries)


def initial_state(role: str = "primary") -> ConfState:
    return ConfState(role=role, upstream=None, sync=NO_SYNC, generation="0")
