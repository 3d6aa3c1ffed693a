"""Major-version upgrade benchmark (docs/upgrade.md, issue 12): pgwarden's online upgrade against
`pg_upgrade --link`, in one run, each under the same steady writer through PgBouncer.

    .venv/bin/python bench/upgrade.py [--rows 200000] [--nodes 3] [--settle 50]

(a) `pgwarden local up --nodes N --bin-dir /usr/lib/postgresql/15/bin --pgbouncer --set
parameters.wal_level=logical`, `--rows` rows of payload, a writer through PgBouncer, then
`pgwarden local upgrade` to the embedded 18 and, under a new writer, `--rollback`.
(b) a second cluster made the same way, the same payload and writer, then the agents stopped,
`pg_upgrade --link` of the leader's data to the embedded 18, the leader brought up on 18 under
pgwarden and the standbys cloned again (bench/upgrade_offline.py says how and why).

For each: failed transactions (and failed connects), the longest wait (the longest time between
two acknowledged commits, and the longest single attempt), acknowledged rows missing afterwards,
duplicate keys, write unavailability (from the first write that failed or blocked to the first
acknowledged by the other version), and the seconds until every standby streams again. Clusters
live in a temporary directory under /var/lib/pgwarden-bench (as root; PostgreSQL runs as
`postgres`), are stopped and removed afterwards. `local up` picks its own free ports.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.procs import wait_for
from bench.routing import pgwarden
from bench.upgrade_cluster import StreamingMonitor, dsn, up_pg15
from bench.upgrade_offline import upgrade_offline
from bench.upgrade_stats import (
    Attempt,
    Row,
    error_summary,
    figures,
    markdown_table,
    standbys_back,
    unavailability,
)
from bench.upgrade_writer import TimedWriter, missing, prepare, version

BENCH_ROOT = Path("/var/lib/pgwarden-bench")
PAUSED = re.compile(r"paused \d+ ms \([^)]*\)")


def log(msg: str) -> None:
    print(msg, flush=True)


def acks_after(w: TimedWriter, major: int, more: int, timeout: float = 180) -> None:
    want = w.acks_on(major) + more
    wait_for(lambda: w.acks_on(major) >= want, timeout, f"{more} more acknowledged writes on {major}")


@dataclass
class Phase:
    attempts: list[Attempt]
    samples: list[tuple[float, bool]]  # (time, every standby streaming) of the serving cluster
    acked: list[int]  # every id acknowledged in this phase and the ones before on this cluster
    said: str  # what the switch reported (pgwarden's pause line, pg_upgrade's step times)


def switch_under_writer(bouncer: str, old: int, new: int, settle: int, monitor: StreamingMonitor,
                        switch: Callable[[], str], earlier: list[int]) -> Phase:
    """Run `switch` under a new writer: from `settle` commits on `old` until `settle` commits on
    `new` and every standby of `monitor`'s cluster streaming."""
    w = TimedWriter(bouncer)
    w.start()
    monitor.start()
    try:
        acks_after(w, old, settle)
        said = switch()
        acks_after(w, new, settle, timeout=600)
        wait_for(monitor.streaming_now, 600, f"every standby streaming on {new}", interval=0.2)
    finally:
        attempts = w.stop()
        samples = monitor.stop()
    said += f"; errors: {error_summary(attempts)}"
    return Phase(attempts, samples, earlier + [a.id for a in attempts if a.id is not None], said)


def row(method: str, p: Phase, old: int, new: int, bouncer: str) -> Row:
    span = unavailability(p.attempts, old, new)
    back = standbys_back(p.samples, span[0]) if span is not None else None
    return Row(method, figures(p.attempts, old, new), missing(bouncer, p.acked), back, version(bouncer))


def online(d: Path, rows: int, nodes: int, settle: int) -> list[tuple[Row, str]]:
    log(f"(a) pgwarden online upgrade: {nodes}-node PostgreSQL 15 cluster in {d}, {rows} rows ...")
    up_pg15(d, nodes)
    prepare(dsn(d), rows)
    bouncer = dsn(d, via_pgbouncer=True)

    def upgrade(*extra: str) -> Callable[[], str]:
        def run() -> str:
            t0 = time.monotonic()
            out = pgwarden("local", "upgrade", "--dir", str(d), *extra, timeout=1200)
            paused = PAUSED.findall(out)
            said = f"{paused[-1] if paused else 'no pause line'}; command took {time.monotonic() - t0:.1f} s"
            log(f"  pgwarden local upgrade --dir D {' '.join(extra)}: {said}")
            return said
        return run

    up = switch_under_writer(bouncer, 15, 18, settle, StreamingMonitor(d / "pg18", nodes, 18), upgrade(), [])
    up_row = row("pgwarden local upgrade (15 -> 18)", up, 15, 18, bouncer)
    # Back: the old cluster's standbys never stopped streaming.
    back = switch_under_writer(bouncer, 18, 15, settle, StreamingMonitor(d, nodes, 15),
                               upgrade("--rollback"), up.acked)
    back_row = row("pgwarden local upgrade --rollback (18 -> 15)", back, 18, 15, bouncer)
    return [(up_row, up.said), (back_row, back.said)]


def offline(d: Path, rows: int, nodes: int, settle: int) -> list[tuple[Row, str]]:
    log(f"(b) pg_upgrade --link: {nodes}-node PostgreSQL 15 cluster in {d}, {rows} rows ...")
    up_pg15(d, nodes)
    prepare(dsn(d), rows)
    bouncer = dsn(d, via_pgbouncer=True)

    def run() -> str:
        t = upgrade_offline(d, nodes, log)
        return (f"agents stopped {t.stopped - t.stopping:.1f} s, pg_upgrade --link "
                f"{t.upgraded - t.stopped:.1f} s, leader leading on 18 "
                f"{t.leader_started - t.upgraded:.1f} s later")

    p = switch_under_writer(bouncer, 15, 18, settle, StreamingMonitor(d, nodes, 18), run, [])
    return [(row("pg_upgrade --link, standbys cloned again (15 -> 18)", p, 15, 18, bouncer), p.said)]


def down(d: Path) -> None:
    for c in (d / "pg18", d):
        if (c / "state.json").exists():
            subprocess.run([sys.executable, "-m", "pgwarden", "local", "down", "--dir", str(c)],
                           capture_output=True, timeout=300, stdin=subprocess.DEVNULL)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000, help="rows of payload (about 150 bytes each)")
    ap.add_argument("--nodes", type=int, default=3, help="members of each cluster (3)")
    ap.add_argument("--settle", type=int, default=50,
                    help="acknowledged commits before and after each switch (50)")
    ap.add_argument("--only", choices=("online", "offline"), help="run one method only")
    args = ap.parse_args()
    if args.rows < 0 or args.nodes < 1 or args.settle < 1:
        ap.error("--rows must be >= 0, --nodes and --settle >= 1")
    BENCH_ROOT.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="upgrade-", dir=BENCH_ROOT))
    os.chmod(base, 0o755)
    results: list[tuple[Row, str]] = []
    load = os.getloadavg()
    try:
        for name, method in (("online", online), ("offline", offline)):
            if args.only in (None, name):
                try:
                    results += method(base / name, args.rows, args.nodes, args.settle)
                finally:
                    down(base / name)
    finally:
        if not os.environ.get("PGWARDEN_KEEP_BENCH_DIRS"):
            shutil.rmtree(base, ignore_errors=True)
    after = os.getloadavg()
    print()
    print(markdown_table([r for r, _ in results]), end="")
    print()
    for r, said in results:
        print(f"- {r.method}: {said}")
    print(f"\n({args.nodes} nodes, {args.rows} rows; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
          f"before, {after[0]:.2f} {after[1]:.2f} {after[2]:.2f} after; {os.cpu_count()} cores)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
