"""One store for many clusters (issue 16, part 3): N clusters x 3 simulated agents drive the real
store code (`ClusterStore` over the etcd or ZooKeeper `KV`) at default timing against one local
etcd or ZooKeeper, and this reports the store's CPU, p50/p99 request latency and missed lease
renewals. PostgreSQL is replaced by a generator of positions: the store's load is what is measured.

Usage: python bench/scale.py --clusters N --store etcd|zookeeper --seconds S
       python bench/scale.py --sweep [--sizes 10,50,100,200] --store etcd --seconds S
A single run ends with the line `clusters=N missed_renewals=M p99_ms=X store_cpu_s=Y`.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: make `bench` importable

from bench.scale_agent import MEMBERS, cpu_seconds
from bench.scale_stats import Summary, percentile, summary_line
from bench.scale_store import STORES, Store, machine_jiffies, requests_handled, running_store, wal_fsync
from bench.scale_worker import BOOTSTRAP_TIMEOUT, run_worker
from pgwarden.config.schema import ClusterSettings

DEFAULT_SIZES = {"etcd": (10, 50, 100, 200), "zookeeper": (10, 50, 100)}
WARMUP = 5.0  # seconds of loops after every agent bootstrapped, before the window opens
BUSY = 0.9  # a process using this share of one core (or the machine of all of its) is saturated


@dataclass
class Result:
    clusters: int
    store: str
    seconds: float
    timing: tuple[float, float, float]
    latencies: dict[str, list[float]] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    loops: int = 0
    early_wakes: int = 0
    lateness: list[float] = field(default_factory=list)
    renewals: int = 0
    missed: int = 0
    store_cpu_s: float = 0.0
    store_requests: dict[str, int] = field(default_factory=dict)
    driver_cpu_s: list[float] = field(default_factory=list)  # per worker process
    machine_busy: float = 0.0  # share of all cores busy over the window (anyone's work)
    stuck: int = 0
    idle: bool = False
    oversleep: list[float] = field(default_factory=list)  # the driver's wake-up delays, s
    fsync_ms: float | None = None  # etcd: mean WAL fsync over the window

    def all_latencies(self) -> list[float]:
        return [x for xs in self.latencies.values() for x in xs]

    def p(self, q: float, op: str | None = None) -> float:
        """Percentile of call latency in ms (all store calls, or one operation's)."""
        xs = self.all_latencies() if op is None else self.latencies.get(op, [])
        return percentile(xs, q) * 1000.0

    def summary(self) -> Summary:
        return Summary(self.clusters, self.missed, self.p(99), self.store_cpu_s)

    def agents(self) -> int:
        return self.clusters * MEMBERS

    def calls_per_s(self) -> float:
        return len(self.all_latencies()) / self.seconds

    def server_requests_per_s(self) -> float:
        return sum(self.store_requests.values()) / self.seconds

    def driver_bound(self) -> str | None:
        """Why the driver itself may have slowed its measurements (its GIL saturated), or None."""
        hot = [c / self.seconds for c in self.driver_cpu_s]
        if any(h >= BUSY for h in hot):
            return f"a worker process used {max(hot):.0%} of a core"
        return None

    def absorb(self, tally: dict[str, Any]) -> None:
        for op, xs in tally["latencies"].items():
            self.latencies.setdefault(op, []).extend(xs)
        for name in ("failed", "errors"):
            mine: dict[str, int] = getattr(self, name)
            for k, v in tally[name].items():
                mine[k] = mine.get(k, 0) + v
        self.loops += tally["loops"]
        self.early_wakes += tally["early_wakes"]
        self.lateness.extend(tally["lateness"])
        self.renewals += tally["renewals"]
        self.missed += tally["missed"]
        self.driver_cpu_s.append(tally["cpu_s"])
        self.stuck += tally["stuck"]
        self.oversleep.extend(tally["oversleep"])


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0) > 0}


def run_one(store_kind: str, clusters: int, seconds: float, workers: int,
            timing: tuple[float, float, float], base: Path, idle: bool = False) -> Result:
    """Start a fresh store, run `clusters` x 3 agents, measure `seconds`, stop everything."""
    ctx = mp.get_context("spawn")  # a clean interpreter per worker: no threads forked mid-flight
    result = Result(clusters, store_kind, seconds, timing)
    with running_store(store_kind, base) as store:
        names = [f"c{i:05d}" for i in range(clusters)]
        shares = [names[w::workers] for w in range(workers) if names[w::workers]]
        ready: Any = ctx.Queue()
        results: Any = ctx.Queue()
        go = ctx.Event()
        bounds = ctx.Array("d", 2, lock=False)
        procs = [ctx.Process(target=run_worker, name=f"scale-worker-{w}",
                             args=(w, store_kind, store.endpoint, share, timing, ready, results, go, bounds,
                                   idle))
                 for w, share in enumerate(shares)]
        for p in procs:
            p.start()
        try:
            _measure(store, procs, ready, results, go, bounds, result)
        finally:
            for p in procs:
                p.join(30.0)
                if p.is_alive():
                    p.kill()  # a worker of ours that would not end; by its own handle
    return result


def _measure(store: Store, procs: list[Any], ready: Any, results: Any, go: Any, bounds: Any,
             result: Result) -> None:
    for _ in procs:
        worker, failures = ready.get(timeout=BOOTSTRAP_TIMEOUT + 30.0)
        if failures:
            raise RuntimeError(f"worker {worker}: agents failed to bootstrap: {'; '.join(failures)}")
    start = time.monotonic() + WARMUP
    bounds[0], bounds[1] = start, start + result.seconds
    go.set()
    time.sleep(max(0.0, start - time.monotonic()))
    cpu0, req0, (busy0, total0) = cpu_seconds(store.pid), requests_handled(store), machine_jiffies()
    fs0 = wal_fsync(store)
    time.sleep(max(0.0, bounds[1] - time.monotonic()))
    cpu1, req1, (busy1, total1) = cpu_seconds(store.pid), requests_handled(store), machine_jiffies()
    result.store_cpu_s = cpu1 - cpu0
    result.store_requests = _delta(req1, req0)
    fs1 = wal_fsync(store)
    if fs0 is not None and fs1 is not None and fs1[1] > fs0[1]:
        result.fsync_ms = (fs1[0] - fs0[0]) / (fs1[1] - fs0[1]) * 1000.0
    result.machine_busy = (busy1 - busy0) / max(1, total1 - total0)
    for _ in procs:
        result.absorb(results.get(timeout=120.0))


def describe(r: Result) -> list[str]:
    """The details printed before the summary line."""
    ttl, loop_wait, retry_timeout = r.timing
    per_s = r.server_requests_per_s()
    lines = [
        f"store={r.store} clusters={r.clusters} agents={r.agents()} window={r.seconds:g}s "
        f"positions={'idle' if r.idle else 'moving'} "
        f"timing ttl={ttl:g} loop_wait={loop_wait:g} retry_timeout={retry_timeout:g}",
        f"store: cpu {r.store_cpu_s:.2f}s ({r.store_cpu_s / r.seconds:.1%} of one core); "
        f"requests received {per_s:.0f}/s = {per_s / r.agents():.2f}/s per agent, "
        f"{per_s / r.clusters:.2f}/s per cluster",
        "store requests by kind (/s): " + ", ".join(
            f"{k} {v / r.seconds:.1f}" for k, v in sorted(r.store_requests.items(), key=lambda kv: -kv[1])),
        f"store-port calls: {r.calls_per_s():.0f}/s ({r.calls_per_s() / r.agents():.2f}/s per agent); "
        f"latency p50 {r.p(50):.1f} ms, p99 {r.p(99):.1f} ms, max {r.p(100):.1f} ms",
        "  by call: " + ", ".join(f"{op} n={len(xs)} p50={r.p(50, op):.1f} p99={r.p(99, op):.1f} ms"
                                  for op, xs in sorted(r.latencies.items())),
        f"leases: {r.renewals} renewals, {r.missed} missed; failed calls: "
        f"{sum(r.failed.values())} {dict(r.failed) or ''}; loop errors: {r.errors or 'none'}",
        f"loops: {r.loops} ({r.loops / r.seconds / r.agents():.2f}/s per agent; "
        f"{r.early_wakes} woken early by news); start behind schedule p99 "
        f"{percentile(r.lateness, 99) * 1000 if r.lateness else math.nan:.0f} ms",
        f"driver: {len(r.driver_cpu_s)} worker processes, cpu " +
        ", ".join(f"{c:.1f}s" for c in r.driver_cpu_s) + "; " +
        (f"CPU-BOUND: {why}; latencies include the driver's own waiting"
         if (why := r.driver_bound()) else "not CPU-bound"),
        f"driver wake-up delay (a 10 ms sleep, late by): p50 {percentile(r.oversleep, 50) * 1000:.1f} ms, "
        f"p99 {percentile(r.oversleep, 99) * 1000:.1f} ms"
        + ("" if r.fsync_ms is None else f"; etcd WAL fsync mean {r.fsync_ms:.1f} ms"),
        f"machine: {r.machine_busy:.0%} of all cores busy over the window (store, driver and anything "
        f"else running" + ("; saturated: latencies include waiting for a core)" if r.machine_busy >= BUSY
                           else ")"),
    ]
    if r.stuck:
        lines.append(f"warning: {r.stuck} agent threads had not ended after the window")
    return lines


def sweep_table(results: list[Result]) -> list[list[str]]:
    rows = []
    for r in results:
        per_s = r.server_requests_per_s()
        rows.append([r.store, str(r.clusters), str(r.agents()), f"{per_s:.0f}", f"{per_s / r.agents():.2f}",
                     f"{r.store_cpu_s / r.seconds:.1%}", f"{r.p(50):.1f}", f"{r.p(99):.1f}",
                     f"{r.missed}/{r.renewals}", f"{max(r.driver_cpu_s or [0.0]) / r.seconds:.0%}",
                     f"{percentile(r.oversleep, 99) * 1000:.0f}", f"{r.machine_busy:.0%}"])
    return rows


SWEEP_HEADERS = ["store", "clusters", "agents", "store req/s", "req/s per agent", "store CPU (1 core)",
                 "p50 ms", "p99 ms", "missed/renewals", "busiest driver process (1 core)",
                 "driver wake-up p99 ms", "machine busy"]


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--sizes: a comma-separated list of cluster counts; got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"--sizes: cluster counts must be 1 or more; got {text!r}")
    return sizes


def main(argv: list[str] | None = None) -> int:
    d = ClusterSettings()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", choices=STORES, default="etcd")
    ap.add_argument("--clusters", type=int, help="clusters of 3 agents (one size)")
    ap.add_argument("--seconds", type=float, default=30.0, help="measurement window (after a warm-up)")
    ap.add_argument("--sweep", action="store_true", help="run several sizes and print a table")
    ap.add_argument("--sizes", type=_sizes, help="sizes for --sweep (default: etcd 10,50,100,200; "
                                                  "zookeeper 10,50,100)")
    ap.add_argument("--workers", type=int, default=2, help="driver processes (default 2)")
    ap.add_argument("--idle", action="store_true",
                    help="positions stand still: clusters taking no writes (default: moving every loop)")
    ap.add_argument("--ttl", type=float, default=d.ttl)
    ap.add_argument("--loop-wait", type=float, default=d.loop_wait)
    ap.add_argument("--retry-timeout", type=float, default=d.retry_timeout)
    ap.add_argument("--dir", type=Path,
                    help="where the store keeps its data (default: a temporary directory)")
    args = ap.parse_args(argv)
    if args.sweep == (args.clusters is not None):
        ap.error("give either --clusters N (one size) or --sweep")
    if args.clusters is not None and args.clusters < 1:
        ap.error(f"--clusters must be 1 or more; got {args.clusters}")
    if args.seconds <= 0 or args.workers < 1:
        ap.error("--seconds must be positive and --workers 1 or more")
    try:
        s = ClusterSettings(ttl=args.ttl, loop_wait=args.loop_wait, retry_timeout=args.retry_timeout)
    except ValueError as e:
        ap.error(str(e))
    timing = (s.ttl, s.loop_wait, s.retry_timeout)
    sizes = (args.sizes or list(DEFAULT_SIZES[args.store])) if args.sweep else [args.clusters]
    done: list[Result] = []
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix="pgwarden-scale-", dir=args.dir) as tmp:
            r = run_one(args.store, n, args.seconds, args.workers, timing, Path(tmp), args.idle)
        r.idle = args.idle
        done.append(r)
        print("\n".join(describe(r)), flush=True)
        if args.sweep:
            print(summary_line(r.summary()), flush=True)
    if args.sweep:
        from bench.report import print_simple_table

        print_simple_table(f"store scale: {args.store}, {args.seconds:g} s per size", SWEEP_HEADERS,
                           sweep_table(done))
    else:
        print(summary_line(done[0].summary()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
