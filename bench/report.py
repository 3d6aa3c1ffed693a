"""The benchmark's rows and how they are shown: a rich table on the terminal and the markdown
page (`--write`) with the machine, the command, the timing presets and the method."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.drivers.base import Timing

console = Console(stderr=True)


@dataclass
class Row:
    scenario: str
    tool: str
    timing: Timing
    unit: str
    values: list[float] = field(default_factory=list)
    lost: int | None = None
    failed: int | None = None
    errors: list[str] = field(default_factory=list)

    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None


def fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}"


def ratios(rows: list[Row]) -> dict[int, float]:
    """pgwarden median / Patroni median, for rows whose scenario and preset label match."""
    out: dict[int, float] = {}
    for i, r in enumerate(rows):
        if not r.tool.startswith("pgwarden") or r.median() is None:
            continue
        for p in rows:
            pm = p.median()
            if p.tool == "patroni" and p.scenario == r.scenario and p.timing.label == r.timing.label and pm:
                out[i] = (r.median() or 0.0) / pm
    return out


HEADERS = ["scenario", "tool", "timing", "unit", "runs", "median", "min", "max", "rows lost", "failed tx"]


def cells(rows: list[Row]) -> list[list[str]]:
    rat = ratios(rows)
    table = []
    for i, r in enumerate(rows):
        table.append(
            [
                r.scenario,
                r.tool,
                f"{r.timing.label} ({r.timing.ttl:g}/{r.timing.loop_wait:g}/{r.timing.retry_timeout:g})",
                r.unit,
                f"{len(r.values)}" + (f" ({len(r.errors)} failed)" if r.errors else ""),
                fmt(r.median()),
                fmt(min(r.values) if r.values else None),
                fmt(max(r.values) if r.values else None),
                "—" if r.lost is None else str(r.lost),
                "—" if r.failed is None else str(r.failed),
                f"{rat[i]:.2f}" if i in rat else "—",
            ]
        )
    return table


def print_table(rows: list[Row]) -> None:
    table = Table(title="HA benchmark (timing = ttl/loop_wait/retry_timeout)")
    for h in [*HEADERS, "pgwarden/Patroni"]:
        table.add_column(h, justify="left" if h in ("scenario", "tool", "timing", "unit") else "right")
    for c in cells(rows):
        table.add_row(*c)
    # Wide enough for every column even when stdout is a pipe or a file.
    Console(width=max(Console().width, 150)).print(table)


def print_simple_table(title: str, headers: list[str], rows: list[list[str]]) -> None:
    """Any table of strings on the terminal, then the same as markdown to paste into docs/."""
    table = Table(title=title)
    for i, h in enumerate(headers):
        table.add_column(h, justify="left" if i == 0 else "right")
    for r in rows:
        table.add_row(*r)
    Console(width=max(Console().width, 150)).print(table)
    print("\n".join(markdown_table(headers, rows)))


def markdown_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers),
            *("| " + " | ".join(r) + " |" for r in rows)]


def machine() -> str:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    model = next((ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")), "?")
    mem_kb = next((int(ln.split()[1]) for ln in meminfo if ln.startswith("MemTotal")), 0)
    return f"{os.cpu_count()} CPUs ({model}), {mem_kb / 1024 / 1024:.1f} GiB RAM, {platform.platform()}"


def markdown(rows: list[Row], command: str, presets: dict[str, dict[str, Timing]]) -> str:
    date = subprocess.run(["date", "-u"], capture_output=True, text=True).stdout.strip()
    lines = [
        "# HA benchmark: pgwarden and Patroni",
        "",
        f"- Date: {date}",
        f"- Machine: {machine()}",
        f"- Command: `{command}`",
        "",
        "| " + " | ".join([*HEADERS, "pgwarden/Patroni"]) + " |",
        "|" + "---|" * (len(HEADERS) + 1),
    ]
    lines += ["| " + " | ".join(c) + " |" for c in cells(rows)]
    lines += ["", "## Timing presets (seconds)", ""]
    for tool, ps in presets.items():
        for t in ps.values():
            lines.append(f"- {tool} `{t.label}`: {t.describe()}")
    if tool_notes := [f"- {r.scenario} {r.tool} {r.timing.label}: {e}" for r in rows for e in r.errors]:
        lines += ["", "## Failed runs", "", *tool_notes]
    lines += ["", METHOD]
    return "\n".join(lines) + "\n"


METHOD = """## Method

- Workload (`bench/workload.py`): 2 writer threads, each at most 200 inserts/s, autocommit, through a
  libpq multi-host string with `target_session_attrs=read-write connect_timeout=1`, reconnecting every
  20 ms while no primary answers. Times are the client's monotonic clock.
- crash / crash-sync / crash-quorum: SIGKILL, in one sweep, of the primary's agent, its postmaster and all
  their descendants (a node crash), with `synchronous_mode` off, on and quorum (pgwarden `local up --sync
  quorum`, Patroni `synchronous_mode: quorum`; `synchronous_node_count` 1: each commit waits for 1 of the
  2 standbys). Each kill waits until the tool names its synchronous standby (on) or both standbys as
  quorum voters (quorum). Value = longest gap between acknowledged commits from just before the
  kill until the first commit acknowledged by another server. Rows lost = acknowledged ids missing on
  the new primary (summed over runs). Failed tx = statements that raised (summed over runs). The killed
  node is restarted and the cluster must be healthy again before the next run.
- switchover: the tool's CLI (`patronictl switchover --force`, `pgwarden ctl switchover --force`);
  value measured as for crash.
- bootstrap: from nothing (etcd included) to one primary and 2 streaming replicas.
- footprint: each agent process alone (not PostgreSQL, not the agent's children), idle cluster:
  VmRSS at the end of the window, and (utime+stime) over the window scaled to one minute; one value per
  agent per run.
- false-failover: `pgbench -i -s 1`, then TPC-B-like `pgbench -c 4 -j 2` through the read-write DSN for
  the chosen time, the second half with a busy loop on every core; value = leader changes in the tool's
  own `/history` over the load (nobody asked for any). One value per tool and timing.
- partition / partition-sync: the same clusters on a private network of Linux namespaces (etcd on
  one host, each node on its own, the benchmark a client on the same bridge; tests/support/netns.py).
  The primary is cut off from etcd and from the other nodes (packets silently dropped both ways); the
  client still reaches it, as an application next to it would. Value, rows lost and failed tx as for
  crash, with lost rows counted on the new primary; a run in which the old primary acknowledged a
  commit after the new primary's first is listed under "Failed runs" (two writable primaries). The
  partition is healed after each run and the old primary must be back, streaming, before the next.
"""
