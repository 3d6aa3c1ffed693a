"""Run the HA benchmark scenarios against pgwarden and/or Patroni and print one comparison table.

Usage: .venv/bin/python bench/run.py [--runs 5] [--tools pgwarden,patroni] [--scenarios ...] [--write PATH]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: make `bench` importable

from psycopg.conninfo import make_conninfo
from rich.console import Console

from bench.drivers.base import ClusterDriver, SyncMode, Timing
from bench.drivers.patroni import PatroniDriver, ensure_environment
from bench.drivers.pgwarden import PgwardenDriver
from bench.drivers.pgwarden_netns import PgwardenNetnsDriver
from bench.procs import cpu_seconds, helper_pids, rss_mb, wait_for
from bench.report import Row, markdown, print_table
from bench.routing import PGBENCH
from bench.workload import Workload, count_lost, prepare
from tests.support.netns import Network, unavailable_reason

REPO = Path(__file__).resolve().parent.parent
DRIVERS: dict[str, Callable[[], ClusterDriver]] = {
    "patroni": PatroniDriver,
    "pgwarden": PgwardenDriver,  # on etcd, like Patroni here
    # The same agent on the other coordination backends (`local up --store`), one row each.
    "pgwarden-zookeeper": partial(PgwardenDriver, name="pgwarden-zookeeper", store="zookeeper"),
    "pgwarden-raft": partial(PgwardenDriver, name="pgwarden-raft", store="raft"),
}
# The partition rows need each node behind its own interface: the same tools on a private network
# of namespaces (etcd or ZooKeeper on one host, each node on another, this process a client).
NETNS_DRIVERS: dict[str, Callable[[], ClusterDriver]] = {
    "patroni": lambda: PatroniDriver(net=Network()),
    "pgwarden": PgwardenNetnsDriver,
    "pgwarden-zookeeper": partial(PgwardenNetnsDriver, name="pgwarden-zookeeper", store="zookeeper"),
    "pgwarden-raft": partial(PgwardenNetnsDriver, name="pgwarden-raft", store="raft"),
}
REQUIRED_FOR_DOCS = {"patroni", "pgwarden"}
BACKEND_TOOLS = {"pgwarden-zookeeper", "pgwarden-raft"}
ALL_SCENARIOS = ["crash", "crash-sync", "crash-quorum", "partition", "partition-sync", "switchover",
                 "bootstrap", "footprint", "false-failover", "store-outage",
             "store-outage-replica-down"]
WARMUP_ACKS = 100  # acknowledged commits before a fault, so "last ack before" is a steady-state write
AFTER_ACKS = 50  # acknowledged commits on the new primary before the workload stops

console = Console(stderr=True)


def say(msg: str) -> None:
    console.log(msg)


# -- scenarios -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FaultResult:
    pause: float  # longest gap between acks, from just before the fault to the new primary's first
    failed: int  # transactions that raised
    lost: int  # acknowledged ids the new primary does not have
    overlap: int  # acks by the old primary after the new one acknowledged: two writable primaries


def _fault_run(driver: ClusterDriver, timing: Timing, fault: Callable[[], None]) -> FaultResult:
    """Write, inject `fault`, wait until another server acknowledges."""
    dsn = driver.dsn()
    prepare(dsn)
    workload = Workload(dsn)
    workload.start()
    try:
        wait_for(lambda: workload.ack_count() >= WARMUP_ACKS, 30, "writes before the fault")
        last = workload.last_ack()
        assert last is not None
        fault_at = time.monotonic()
        fault()
        # Generous: a Patroni replica may need a full ttl plus loop_wait before it even starts to promote.
        first_new = wait_for(
            lambda: workload.ack_after(fault_at, other_than=last.server),
            3 * timing.ttl + 60,
            "a write acknowledged by the new primary",
        )
        enough = workload.ack_count() + AFTER_ACKS
        wait_for(lambda: workload.ack_count() >= enough, 30, "writes on the new primary")
    finally:
        history = workload.stop()
    found = history.failover_pause(fault_at)
    assert found is not None, "the history lost the acks we waited for"
    pause, new_at = found
    failed = history.failed_transactions(fault_at - 1.0, first_new.at)
    # Ask the new primary itself: after a partition the old one may still answer.
    lost = count_lost(dsn, history.acked_ids(), server=first_new.server)
    overlap = sum(1 for a in history.acks if a.server == last.server and a.at > new_at)
    return FaultResult(pause, failed, lost, overlap)


def scenario_fault(tool: str, driver: ClusterDriver, timing: Timing, runs: int, name: str) -> Row:
    row = Row(name, tool, timing, "s", lost=0, failed=0)
    for i in range(runs):
        driver.wait_healthy(timeout=120 + 6 * timing.loop_wait)
        fault = {
            "switchover": lambda: driver.switchover(None),
            "partition": driver.partition_primary,
            "partition-sync": driver.partition_primary,
        }.get(name, driver.kill_primary)
        try:
            r = _fault_run(driver, timing, fault)
        except Exception as e:  # record and go on: one bad run must not hide the others
            row.errors.append(f"run {i + 1}: {e}")
            driver.keep = True  # its logs explain the failure
            say(f"[red]{tool} {name} run {i + 1} failed (logs kept): {e}")
        else:
            row.values.append(r.pause)
            row.failed = (row.failed or 0) + r.failed
            row.lost = (row.lost or 0) + r.lost
            if r.overlap:  # a safety failure: it must show in the table, not only in the log
                row.errors.append(f"run {i + 1}: the old primary acknowledged {r.overlap} commit(s) after "
                                  f"the new primary's first")
                driver.keep = True
            say(f"{tool} {name} ({timing.label}) run {i + 1}: {r.pause:.3f}s, failed {r.failed}, "
                f"lost {r.lost}, old primary acks after the new one's first: {r.overlap}")
        driver.heal()
    driver.wait_healthy(timeout=120 + 6 * timing.loop_wait)
    return row


def scenario_store_outage(tool: str, driver: ClusterDriver, timing: Timing, runs: int, seconds: float,
                          name: str = "store-outage") -> Row:
    """The store (etcd) frozen by SIGSTOP for `seconds` under a steady writer, with each tool's
    failsafe on: the longest write gap from the freeze to `seconds` after the thaw. Patroni's
    failsafe_mode keeps the leader while every member answers it; pgwarden's, while a majority
    confirms (rule 17)."""
    row = Row(name, tool, timing, "s", lost=0, failed=0)
    for i in range(runs):
        driver.wait_healthy(timeout=120 + 6 * timing.loop_wait)
        dsn = driver.dsn()
        if name == "store-outage-replica-down":
            # A majority is left (patroni#2625: Patroni's failsafe needs every member to answer).
            say(f"{tool}: killed replica {driver.kill_replica()} before the outage")
        prepare(dsn)
        workload = Workload(dsn)
        workload.start()
        etcd = driver.store_pid()
        try:
            wait_for(lambda w=workload: w.ack_count() >= WARMUP_ACKS, 30, "writes before the outage")
            frozen_at = time.monotonic()
            os.kill(etcd, signal.SIGSTOP)
            try:
                threading.Event().wait(seconds)
            finally:
                os.kill(etcd, signal.SIGCONT)
            thawed_at = time.monotonic()
            threading.Event().wait(max(10.0, 2 * timing.ttl))  # leases resume: still no gap?
        finally:
            history = workload.stop()
        gap = history.longest_gap(frozen_at, time.monotonic())
        row.values.append(gap)
        row.failed = (row.failed or 0) + history.failed_transactions(frozen_at, time.monotonic())
        lost = count_lost(dsn, history.acked_ids())
        row.lost = (row.lost or 0) + lost
        driver.heal()
        say(f"{tool} {name} ({timing.label}) run {i + 1}: etcd frozen {thawed_at - frozen_at:.0f}s, "
            f"longest write gap {gap:.2f}s, failed {row.failed}, lost {lost}")
    return row


def scenario_bootstrap(tool: str, timing: Timing, runs: int) -> Row:
    row = Row("bootstrap", tool, timing, "s")
    for i in range(runs):
        driver = DRIVERS[tool]()
        LIVE.append(driver)
        started = time.monotonic()
        try:
            driver.up(3, "off", timing)
            row.values.append(time.monotonic() - started)
            say(f"{tool} bootstrap ({timing.label}) run {i + 1}: {row.values[-1]:.2f}s")
        except Exception as e:
            row.errors.append(f"run {i + 1}: {e}")
            driver.keep = True
            say(f"[red]{tool} bootstrap run {i + 1} failed (logs kept): {e}")
        finally:
            driver.down()
            LIVE.remove(driver)
    return row


def scenario_footprint(
    tool: str, driver: ClusterDriver, timing: Timing, runs: int, seconds: float
) -> list[Row]:
    rss = Row("footprint-rss", tool, timing, "MB")
    cpu = Row("footprint-cpu", tool, timing, "cpu s/min")
    # pgwarden's logical gate (a process of its own per node, `local up` gives every node one) is
    # a part Patroni does not have: shown on rows of its own, not in the agents' comparison.
    gate_rss = Row("gate-rss", tool, timing, "MB")
    gate_cpu = Row("gate-cpu", tool, timing, "cpu s/min")
    for i in range(runs):
        driver.wait_healthy(timeout=120)
        # Per node: the agent and its helper processes (pgwarden's fencer), not PostgreSQL.
        agents = driver.agent_pids()
        groups = [[pid, *helper_pids(pid, "pgwarden.fence")] for pid in agents]
        gates = [helper_pids(pid, "pgwarden.gate") for pid in agents]
        every = [pid for g in groups + gates for pid in g]
        before = {pid: cpu_seconds(pid) for pid in every}
        started = time.monotonic()
        # An idle window of fixed length is the measurement itself, not a wait for a condition.
        threading.Event().wait(seconds)
        elapsed = time.monotonic() - started
        for row_rss, row_cpu, of in ((rss, cpu, groups), (gate_rss, gate_cpu, [g for g in gates if g])):
            for g in of:
                row_rss.values.append(sum(rss_mb(pid) for pid in g))
                row_cpu.values.append(sum(cpu_seconds(pid) - before[pid] for pid in g) / elapsed * 60.0)
        say(f"{tool} footprint ({timing.label}) run {i + 1}: processes per node "
            f"{[len(g) for g in groups]}, rss {rss.values[-len(groups) :]}, "
            f"gates {[len(g) for g in gates]}")
    return [rss, cpu, *((gate_rss, gate_cpu) if gate_rss.values else ())]


def _pgbench(dsn: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    # pgbench takes a whole conninfo as its database name: the multi-host DSN (key=value or URI,
    # normalised by psycopg), read-write.
    conninfo = make_conninfo(dsn, target_session_attrs="read-write", connect_timeout="2")
    return subprocess.run([str(PGBENCH), *args, conninfo], capture_output=True, text=True, timeout=timeout)


def _cpu_hogs() -> list[subprocess.Popen[bytes]]:
    """One busy loop per core, bounded: each exits on its own after an hour at the latest."""
    code = "import time\nend = time.monotonic() + 3600\nwhile time.monotonic() < end: pass"
    return [subprocess.Popen([sys.executable, "-c", code]) for _ in range(os.cpu_count() or 1)]


def scenario_false_failover(tool: str, driver: ClusterDriver, timing: Timing, seconds: float) -> Row:
    """A TPC-B-like pgbench load on the primary through the read-write DSN for `seconds`, the
    second half with a busy loop on every core; counts leader changes in the tool's history."""
    row = Row("false-failover", tool, timing, "changes")
    driver.wait_healthy(timeout=120)
    dsn = driver.dsn()
    init = _pgbench(dsn, "-i", "-s", "1", "-q", timeout=300)
    if init.returncode != 0:
        row.errors.append(f"pgbench -i: {init.stderr.strip()[-300:]}")
        return row
    before = driver.leader_changes()
    half = max(1, int(seconds / 2))
    load = ["-n", "-c", "4", "-j", "2", "-T", str(half)]
    notes = []
    quiet = _pgbench(dsn, *load, timeout=half + 120)
    notes.append(f"quiet half exit {quiet.returncode}")
    hogs = _cpu_hogs()
    try:
        busy = _pgbench(dsn, *load, timeout=half + 120)
        notes.append(f"CPU-hog half exit {busy.returncode}")
    finally:
        for h in hogs:
            h.kill()
            h.wait(10)
    changes = driver.leader_changes() - before
    row.values.append(float(changes))
    say(f"{tool} false-failover ({timing.label}): {changes} leader change(s) in {2 * half}s "
        f"of pgbench ({', '.join(notes)})")
    if changes:
        driver.keep = True
    return row


# -- orchestration -------------------------------------------------------------------------------------

LIVE: list[ClusterDriver] = []


def run_tool(
    rows: list[Row], tool: str, preset: Timing, scenarios: list[str], runs: int, footprint_s: float,
    false_failover_s: float = 600.0, store_outage_s: float = 60.0,
) -> None:
    """Append rows as scenarios finish, so an interrupted run still prints what it measured."""
    if "bootstrap" in scenarios:
        rows.append(scenario_bootstrap(tool, preset, runs))
    # One cluster per group: (drivers, synchronous_mode, scenarios it runs in this order).
    groups: list[tuple[dict[str, Callable[[], ClusterDriver]], SyncMode, list[str]]] = [
        (DRIVERS, "off", ["footprint", "false-failover", "switchover", "crash"]),
        (DRIVERS, "on", ["crash-sync"]),
        (DRIVERS, "quorum", ["crash-quorum"]),
        (DRIVERS, "off", ["store-outage", "store-outage-replica-down"]),  # its own cluster, failsafe on
        (NETNS_DRIVERS, "off", ["partition"]),
        (NETNS_DRIVERS, "on", ["partition-sync"]),
    ]
    for drivers, sync, wanted in groups:
        todo = [s for s in wanted if s in scenarios]
        if not todo:
            continue
        why = None
        if drivers is NETNS_DRIVERS:
            why = unavailable_reason() if tool in drivers else "no namespaced driver"
        if why is not None:
            rows += [Row(name, tool, preset, "s", errors=[f"not measured: {why}"]) for name in todo]
            continue
        where = " in network namespaces" if drivers is NETNS_DRIVERS else ""
        driver = drivers[tool]()
        if set(todo) <= {"store-outage", "store-outage-replica-down"}:
            driver.enable_failsafe()
        LIVE.append(driver)
        try:
            say(f"{tool} ({preset.label}): starting a 3-node cluster{where} (synchronous_mode {sync})")
            try:
                driver.up(3, sync, preset)
            except Exception as e:  # no cluster, no rows: say why and go on with the next group
                rows += [Row(name, tool, preset, "s", errors=[f"cluster did not come up: {e}"])
                         for name in todo]
                driver.keep = True
                say(f"[red]{tool} {', '.join(todo)}: {e}")
                continue
            for name in todo:
                if name == "footprint":
                    rows += scenario_footprint(tool, driver, preset, runs, footprint_s)
                elif name == "false-failover":
                    rows.append(scenario_false_failover(tool, driver, preset, false_failover_s))
                elif name.startswith("store-outage"):
                    rows.append(scenario_store_outage(tool, driver, preset, runs, store_outage_s, name))
                else:
                    rows.append(scenario_fault(tool, driver, preset, runs, name))
        finally:
            driver.down()
            LIVE.remove(driver)


def _sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--tools", default="pgwarden,patroni")
    ap.add_argument("--scenarios", default=",".join(ALL_SCENARIOS))
    ap.add_argument("--presets", default="default,fastest", help="timing presets to run, per tool")
    ap.add_argument("--footprint-seconds", type=float, default=60.0)
    ap.add_argument("--false-failover-seconds", type=float, default=600.0,
                    help="pgbench load per tool and timing for the false-failover row (half with a CPU hog)")
    ap.add_argument("--store-outage-seconds", type=float, default=60.0,
                    help="how long etcd is frozen in the store-outage row (both tools' failsafe on)")
    ap.add_argument("--backend-scenarios", default="crash,switchover",
                    help="scenarios for the pgwarden-zookeeper and pgwarden-raft tools (the agent is the "
                         "same; the backend changes how a lease expires and is taken)")
    ap.add_argument("--backend-presets", default="default", help="timing presets for those tools")
    ap.add_argument("--write", metavar="PATH", help="write the table as markdown (e.g. docs/benchmarks.md)")
    args = ap.parse_args()
    tools = [t for t in args.tools.split(",") if t]
    scenarios = [s for s in args.scenarios.split(",") if s]
    for s in scenarios:
        if s not in ALL_SCENARIOS:
            ap.error(f"unknown scenario {s!r}; choose from {', '.join(ALL_SCENARIOS)}")
    for t in tools:
        if t not in DRIVERS:
            ap.error(f"unknown tool {t!r}; choose from {', '.join(DRIVERS)}")
    if os.geteuid() != 0:
        ap.error("run as root: PostgreSQL and the agents are started as the unprivileged `postgres` user")
    signal.signal(signal.SIGTERM, _sigterm)

    if "patroni" in tools:
        say("preparing Patroni's virtualenv and the PostgreSQL copy (idempotent)")
        ensure_environment()
    rows: list[Row] = []
    presets: dict[str, dict[str, Timing]] = {}
    try:
        for tool in tools:
            backend = tool in BACKEND_TOOLS
            wanted = (args.backend_presets if backend else args.presets).split(",")
            todo = [s for s in scenarios if not backend or s in args.backend_scenarios.split(",")]
            ps = {k: v for k, v in DRIVERS[tool]().presets.items() if k in wanted}
            presets[tool] = ps
            for preset in ps.values():
                say(f"[bold]{tool}, timing {preset.label}: {preset.describe()}")
                run_tool(rows, tool, preset, todo, args.runs, args.footprint_seconds,
                         args.false_failover_seconds, args.store_outage_seconds)
    except KeyboardInterrupt:
        say("[red]interrupted: stopping what was started")
    finally:
        for driver in list(LIVE):
            driver.down()
    order = ["crash", "crash-sync", "crash-quorum", "partition", "partition-sync", "switchover", "bootstrap",
             "footprint-rss", "footprint-cpu", "gate-rss", "gate-cpu", "false-failover", "store-outage",
             "store-outage-replica-down"]
    rows.sort(key=lambda r: (order.index(r.scenario), r.timing.label, r.tool != "patroni", r.tool))
    print_table(rows)
    if args.write and rows:
        target = Path(args.write)
        docs_table = target.resolve() == (REPO / "docs" / "benchmarks.md").resolve()
        if docs_table and not set(tools) >= REQUIRED_FOR_DOCS:
            # docs/benchmarks.md is the side-by-side record: never publish it with one tool missing.
            target = REPO / "bench" / "results" / f"{'-'.join(tools)}-{time.strftime('%Y-%m-%d')}.md"
            say(f"[yellow]not all tools ran: writing {target} instead of docs/benchmarks.md")
        target.parent.mkdir(parents=True, exist_ok=True)
        command = ".venv/bin/python bench/run.py " + " ".join(sys.argv[1:])
        target.write_text(markdown(rows, command, presets))
        say(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
