"""What the CLI shows: member rows built from a store snapshot, tables, the topology tree and
libpq connection strings. Pure functions of their inputs, so they are tested without servers.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TextIO
from urllib.parse import quote

from rich.console import Console
from rich.table import Table
from rich.tree import Tree

from pgwarden.cli.errors import CliError, UsageError
from pgwarden.core.model import ClusterView, HistoryEntry, MemberInfo, Role, Tags, int_to_lsn

# Keys of one member in `ctl list --format json` and `local status --format json`.
__all__ = ["CliError", "UsageError"]  # re-exported: most commands import everything from here

MEMBER_KEYS = ("name", "role", "state", "host", "port", "api_url", "timeline", "lag", "streaming", "tags")



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
        "tags": (tags or Tags()).to_dict(),
    }


def format_tags(tags: Mapping[str, Any]) -> str:
    """Only the tags that differ from the defaults, so the column stays readable."""
    default = Tags().to_dict()
    parts: list[str] = []
    for k, v in tags.items():
        if default.get(k) == v:
            continue
        parts.append(k if v is True else f"{k}={v}")
    return ", ".join(parts)


def format_lag_mb(lag: int | None) -> str:
    if lag is None:
        return "?"
    return f"{lag / (1024 * 1024):.1f}" if lag else "0"


def members_table(rows: Sequence[Mapping[str, Any]], title: str | None = None) -> Table:
    table = Table(title=title)
    for col in ("Member", "Host", "Role", "State", "TL", "Lag (MB)", "Tags"):
        table.add_column(col, justify="right" if col in ("TL", "Lag (MB)") else "left")
    for r in rows:
        table.add_row(
            str(r["name"]),
            f"{r['host']}:{r['port']}",
            str(r["role"]),
            # Like patronictl: a running replica whose WAL receiver streams shows "streaming".
            "streaming" if r["state"] == "running" and r.get("streaming") else str(r["state"]),
            "" if r["timeline"] is None else str(r["timeline"]),
            format_lag_mb(r["lag"]),
            format_tags(r["tags"]),
        )
    return table


def history_table(history: Iterable[HistoryEntry]) -> Table:
    table = Table(title="Timeline history")
    for col in ("TL", "LSN", "Reason", "Time", "New leader"):
        table.add_column(col)
    for e in history:
        when = "" if e.at is None else time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(e.at))
        table.add_row(str(e.timeline), int_to_lsn(e.switch_lsn) or "", e.reason, when, e.new_leader or "")
    return table


def topology_tree(view: ClusterView, title: str) -> Tree:
    """The leader at the root, replicas under their `upstream` (cascading), the rest under the
    leader; members whose upstream is unknown or absent also hang off the leader, and with no
    leader at all every member is listed at the top level."""
    leader = view.leader.name if view.leader and view.leader.name in view.members else None

    def label(m: MemberInfo) -> str:
        return f"{m.name} ({member_role(view, m)}, {m.state}, {m.host}:{m.port})"

    children: dict[str | None, list[MemberInfo]] = {}
    for m in sorted(view.members.values(), key=lambda m: m.name):
        if m.name == leader:
            continue
        parent = m.upstream if m.upstream in view.members and m.upstream != m.name else leader
        children.setdefault(parent, []).append(m)

    root = Tree(title)
    seen: set[str] = set()

    def attach(node: Tree, name: str | None) -> None:
        for child in children.get(name, []):
            if child.name in seen:  # a loop of upstreams: show it once
                continue
            seen.add(child.name)
            attach(node.add(label(child)), child.name)

    if leader is not None:
        seen.add(leader)
        attach(root.add(label(view.members[leader])), leader)
    else:
        attach(root, None)
    # Members caught in an upstream loop that never reaches the leader.
    for m in sorted(view.members.values(), key=lambda m: m.name):
        if m.name not in seen:
            seen.add(m.name)
            attach(root.add(label(m) + " [upstream loop]"), m.name)
    return root


def libpq_dsn(
    hosts: Sequence[tuple[str, int]],
    user: str,
    password: str,
    replicas: bool = False,
    dbname: str = "postgres",
) -> str:
    """A multi-host URI: libpq tries the hosts in order and keeps the first that matches
    `target_session_attrs`, so it reaches the primary (or, with `replicas`, a standby when one
    is up) wherever it runs now."""
    if not hosts:
        raise CliError("no members known to build a connection string from")
    auth = quote(user, safe="")
    if password:
        auth += ":" + quote(password, safe="")
    where = ",".join(f"{h}:{p}" for h, p in hosts)
    attrs = "prefer-standby" if replicas else "read-write"
    db = quote(dbname, safe="")
    return f"postgresql://{auth}@{where}/{db}?target_session_attrs={attrs}&connect_timeout=2"


def console(file: TextIO | None = None) -> Console:
    # Resolve sys.stdout at call time so tests that capture output see it.
    return Console(file=file or sys.stdout, soft_wrap=True)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")
