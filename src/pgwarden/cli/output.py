"""What the CLI shows: tables and the topology tree, plus the member rows and libpq connection
strings of `pgwarden.report`. Pure functions of their inputs, so they are tested without servers.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table
from rich.tree import Tree

from pgwarden.core.model import ClusterView, HistoryEntry, MemberInfo, Tags, int_to_lsn
from pgwarden.errors import CliError, UsageError
from pgwarden.report import MEMBER_KEYS, libpq_dsn, member_role, member_rows, stopped_row

# Re-exported: most commands import everything from here.
__all__ = ["MEMBER_KEYS", "CliError", "UsageError", "libpq_dsn", "member_rows", "stopped_row"]


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
    """One format for every row: "0.0", "1.5", "?" when unknown."""
    if lag is None:
        return "?"
    return f"{lag / (1024 * 1024):.1f}"


def members_table(rows: Sequence[Mapping[str, Any]], title: str | None = None) -> Table:
    table = Table(title=title)
    for col in ("Member", "Host", "Role", "State", "TL", "Lag (MB)", "Tags"):
        table.add_column(col, justify="right" if col in ("TL", "Lag (MB)") else "left")
    for r in rows:
        table.add_row(
            str(r["name"]),
            f"{r['host']}:{r['port']}",
            # patronictl says "Sync Standby"/"Quorum Standby": which replicas hold every
            # acknowledged commit (the store's synchronous set).
            f"{r['role']} ({r['sync']})" if r.get("sync") else str(r["role"]),
            # Like patronictl: a running replica whose WAL receiver streams shows "streaming".
            "streaming" if r["state"] == "running" and r.get("streaming") else str(r["state"]),
            "" if r["timeline"] is None else str(r["timeline"]),
            format_lag_mb(r["lag"]),
            format_tags(r["tags"]),
        )
    return table


def history_table(history: Iterable[HistoryEntry]) -> Table:
    # Narrow columns first and the reason last, wrapped: fits an 80-column terminal.
    table = Table(title="Timeline history")
    for col in ("TL", "LSN", "Time", "New leader"):
        table.add_column(col, no_wrap=True)
    table.add_column("Reason", overflow="fold")
    for e in history:
        when = "" if e.at is None else time.strftime("%m-%d %H:%M:%S", time.localtime(e.at))
        table.add_row(str(e.timeline), int_to_lsn(e.switch_lsn) or "", when, e.new_leader or "", e.reason)
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


def console(file: TextIO | None = None) -> Console:
    # Resolve sys.stdout at call time so tests that capture output see it.
    return Console(file=file or sys.stdout, soft_wrap=True)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")
