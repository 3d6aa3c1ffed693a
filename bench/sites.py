"""Multi-site benchmark rows (docs/multi-site.md): a planned site switchover seen by a client whose
DSN lists both sites' members, back and forth under a steady writer (write pause, rows lost,
failed transactions, and whether any switchover needed pg_rewind or a base backup); the standby
site's lag under a steady write rate (median and p99 seconds from the commit's acknowledgement on
the primary site to the row being visible on the standby site's leader); and a forced promotion
(seconds from `promote-cluster --force` to the first write on the new primary site).

    .venv/bin/python bench/sites.py [--switchovers 20] [--rate 400] [--lag-seconds 30] [--no-forced]

Two `pgwarden local up` clusters on loopback in a temporary directory under /var/lib/pgwarden-bench
(as root; the agents run PostgreSQL as `postgres`): A with 3 nodes, B with 2 nodes and
`--standby-of A`; both are stopped and removed afterwards. Every load is bounded in time.

`--link-rtt-ms R` puts a link with an R ms round trip between the sites. The kernel here has no
`sch_netem`, so the link is a userspace TCP proxy per member (tests/support/delay_proxy.py) that
holds every chunk R/2 ms each way: the stream between the sites goes through it (B's source is
set with `demote-cluster --source`, and each `site-switchover` gets `--source` naming the
target's proxies), and so does the client, which sits in site A: A's members directly, B's
through the proxies. Not delayed: the agents' site probes (GET /site, rule 18, not on the
switchover's path) and `ctl`'s own connections. Without it the figures are loopback figures.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.procs import wait_for
from bench.routing import pgwarden
from bench.scale_stats import percentile
from bench.workload import Workload, count_lost, prepare
from tests.support.delay_proxy import DelayProxy

BENCH_ROOT = Path("/var/lib/pgwarden-bench")
# What an agent logs when it rewinds or clones: a switchover that needed either is not a clean one.
REWIND_OR_CLONE = re.compile(r"run as postgres: \S*(pg_rewind|pg_basebackup) ")


@dataclass
class Site:
    dir: Path

    @property
    def nodes(self) -> list[Path]:
        return sorted(p for p in self.dir.iterdir() if (p / "pgwarden.yaml").is_file())

    def config(self, node: Path) -> dict[str, Any]:
        doc: dict[str, Any] = yaml.safe_load((node / "pgwarden.yaml").read_text())
        return doc

    def node_file(self) -> str:
        return str(self.nodes[0] / "pgwarden.yaml")

    def ports(self) -> set[str]:
        return {str(self.config(n)["postgresql"]["port"]) for n in self.nodes}

    def hosts_ports(self) -> list[tuple[str, int]]:
        return [(self.config(n)["postgresql"]["listen_address"], int(self.config(n)["postgresql"]["port"]))
                for n in self.nodes]

    def leader_dsn(self, user: str, password: str) -> str:
        """A DSN for this site's leader (primary or standby leader), found from each API's /status."""
        for n in self.nodes:
            c = self.config(n)
            api = c["restapi"]
            try:
                with urllib.request.urlopen(f"http://{api['listen_address']}:{api['port']}/status",
                                            timeout=2) as r:
                    role = json.load(r).get("role")
            except (OSError, ValueError):
                continue
            if role in ("primary", "standby_leader"):
                pg = c["postgresql"]
                return (f"host={pg['listen_address']} port={pg['port']} user={user} password={password} "
                        f"dbname=postgres connect_timeout=2")
        raise SystemExit(f"no leader found in {self.dir}")

    def rewinds_and_clones(self) -> int:
        return sum(len(REWIND_OR_CLONE.findall((n / "agent.log").read_text(errors="replace")))
                   for n in self.nodes if (n / "agent.log").exists())


def dsn(sites: list[Site], user: str, password: str, via: dict[Path, list[DelayProxy]] | None = None) -> str:
    """Every member of `sites`, reaching whichever is writable; a site in `via` through its proxies."""
    hp = [x for s in sites for x in (_proxied(via[s.dir]) if via and s.dir in via else s.hosts_ports())]
    return (f"host={','.join(h for h, _ in hp)} port={','.join(str(p) for _, p in hp)} user={user} "
            f"password={password} dbname=postgres connect_timeout=2 target_session_attrs=read-write")


def _proxied(proxies: list[DelayProxy]) -> list[tuple[str, int]]:
    return [(str(p.host), int(p.port)) for p in proxies]


def source_dsn(proxies: list[DelayProxy], user: str) -> str:
    """A standby site's source through the link (no password: the node's passfile has it)."""
    hp = _proxied(proxies)
    return (f"host={','.join(h for h, _ in hp)} port={','.join(str(p) for _, p in hp)} user={user} "
            f"dbname=postgres target_session_attrs=read-write")


@dataclass
class Link:
    """The proxies in front of each site's members (empty: no link, loopback)."""

    proxies: dict[Path, list[DelayProxy]] = field(default_factory=dict)
    replication_user: str = "replicator"

    @classmethod
    def between(cls, sites: list[Site], rtt_ms: float, user: str) -> Link:
        link = cls(replication_user=user)
        for s in sites:
            link.proxies[s.dir] = [DelayProxy(hp, max_seconds=4 * 3600.0).start() for hp in s.hosts_ports()]
            for p in link.proxies[s.dir]:
                p.delay = rtt_ms / 2000.0
        return link

    def source_args(self, target: Site) -> list[str]:
        """`--source` for a site-switchover to `target` (nothing without a link)."""
        px = self.proxies.get(target.dir)
        return ["--source", source_dsn(px, self.replication_user)] if px else []

    def close(self) -> None:
        for ps in self.proxies.values():
            for p in ps:
                p.close()


# -- planned site switchover ------------------------------------------------------------------------


@dataclass
class SwitchoverResult:
    pauses: list[float] = field(default_factory=list)
    lost: int = 0
    failed_transactions: int = 0
    rewinds_or_clones: int = 0


def switchovers(a: Site, b: Site, both: str, count: int, link: Link) -> SwitchoverResult:
    prepare(both)
    before = a.rewinds_and_clones() + b.rewinds_and_clones()
    w = Workload(both, writers=2, rate=200.0)
    w.start()
    out = SwitchoverResult()
    try:
        wait_for(lambda: w.ack_count() > 50, 30, "writes on the primary site")
        primary, standby = a, b
        for i in range(count):
            asked = time.monotonic()
            pgwarden("ctl", "-c", primary.node_file(), "site-switchover", "--to", standby.node_file(),
                     *link.source_args(standby))
            wait_for(partial(_acked_on, w, asked, standby.ports()), 60,
                 f"switchover {i + 1}: a write on {standby.dir.name}")
            wait_for(partial(w.ack_after, time.monotonic() + 1.0), 30, "writes going on")
            print(f"  switchover {i + 1}/{count}: {primary.dir.name} -> {standby.dir.name}", flush=True)
            primary, standby = standby, primary
    finally:
        history = w.stop()
    # The pause of each switchover: from the last ack by the old site to the first by the new one
    # (never two writable sites, so the two sites' acks do not interleave).
    a_ports = a.ports()  # read once: the node files do not change during the run
    for prev, cur in itertools.pairwise(history.acks):
        if (prev.server.rpartition(":")[2] in a_ports) != (cur.server.rpartition(":")[2] in a_ports):
            out.pauses.append(cur.at - prev.at)
    out.failed_transactions = sum(1 for f in history.failures if not f.connecting)
    out.lost = count_lost(both, history.acked_ids())
    out.rewinds_or_clones = a.rewinds_and_clones() + b.rewinds_and_clones() - before
    return out


def _acked_on(w: Workload, after: float, ports: set[str]) -> bool:
    ack = w.ack_after(after)
    return ack is not None and ack.server.rpartition(":")[2] in ports


# -- standby-site lag --------------------------------------------------------------------------------


def standby_lag(primary_dsn: str, standby_dsn: str, rate: float, seconds: float) -> list[float]:
    """Seconds from each commit's acknowledgement to the row being visible on the standby site's
    leader, polled every 10 ms (the poll interval bounds the resolution)."""
    with psycopg.connect(primary_dsn, autocommit=True) as c:
        c.execute("CREATE TABLE IF NOT EXISTS bench_lag (id bigint PRIMARY KEY)")
        c.execute("TRUNCATE bench_lag")
    acked: dict[int, float] = {}
    seen: dict[int, float] = {}
    stop = threading.Event()

    def write() -> None:
        with psycopg.connect(primary_dsn, autocommit=True) as c:
            next_at, i = time.monotonic(), 0
            end = next_at + seconds
            while not stop.is_set() and time.monotonic() < end:
                i += 1
                c.execute("INSERT INTO bench_lag VALUES (%s)", (i,))
                acked[i] = time.monotonic()
                next_at += 1.0 / rate
                stop.wait(max(0.0, next_at - time.monotonic()))

    def poll() -> None:
        with psycopg.connect(standby_dsn, autocommit=True) as c:
            top = 0
            end = time.monotonic() + seconds + 30
            while time.monotonic() < end:
                try:
                    row = c.execute("SELECT coalesce(max(id), 0) FROM bench_lag").fetchone()
                except psycopg.errors.UndefinedTable:  # its creation has not arrived yet
                    time.sleep(0.01)
                    continue
                now = time.monotonic()
                got = int(row[0]) if row else 0
                for i in range(top + 1, got + 1):
                    seen[i] = now
                top = max(top, got)
                if stop.is_set() and top >= max(acked, default=0):
                    return
                time.sleep(0.01)

    failed: list[BaseException] = []

    def poll_or_record() -> None:
        try:
            poll()
        except Exception as e:  # reported below: a row without data must not vanish quietly
            failed.append(e)

    writer, poller = threading.Thread(target=write), threading.Thread(target=poll_or_record)
    poller.start()
    writer.start()
    writer.join(seconds + 30)
    stop.set()
    poller.join(60)
    if failed and not seen:
        raise SystemExit(f"the lag poller on the standby site failed: {failed[0]!r}")
    return [seen[i] - acked[i] for i in acked if i in seen and seen[i] >= acked[i]] + \
        [0.0 for i in acked if i in seen and seen[i] < acked[i]]  # seen before our ack returned


# -- forced promotion --------------------------------------------------------------------------------


def forced_promotion(a: Site, b: Site, b_dsn: str) -> tuple[float, float]:
    """(seconds the command took, seconds from the command to the first write on B)."""
    pgwarden("local", "down", "--dir", str(a.dir))  # the primary site is lost
    t0 = time.monotonic()
    first: list[float] = []
    stop = threading.Event()

    def try_write() -> None:
        while not stop.is_set() and time.monotonic() < t0 + 120:
            try:
                with psycopg.connect(b_dsn, autocommit=True) as c:
                    c.execute("CREATE TABLE IF NOT EXISTS bench_forced (x int)")
                    c.execute("INSERT INTO bench_forced VALUES (1)")
                    first.append(time.monotonic())
                    return
            except psycopg.Error:
                time.sleep(0.02)

    t = threading.Thread(target=try_write)
    t.start()
    pgwarden("ctl", "-c", b.node_file(), "promote-cluster", "--force")
    took = time.monotonic() - t0
    t.join(130)
    stop.set()
    if not first:
        raise SystemExit("no write on the promoted site within 120 s")
    return took, first[0] - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--switchovers", type=int, default=20, help="planned site switchovers in a row (20)")
    ap.add_argument("--rate", type=float, default=400.0, help="writes per second for the lag row (400)")
    ap.add_argument("--lag-seconds", type=float, default=30.0, help="how long the lag row writes (30)")
    ap.add_argument("--no-forced", action="store_true", help="skip the forced promotion row")
    ap.add_argument("--link-rtt-ms", type=float, default=0.0,
                    help="round trip between the sites through delaying proxies (0: loopback)")
    args = ap.parse_args()
    link = Link()
    BENCH_ROOT.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="sites-", dir=BENCH_ROOT))
    os.chmod(base, 0o755)
    a, b = Site(base / "A"), Site(base / "B")
    try:
        print("bringing up site A (3 nodes) and site B (2 nodes, standby of A) ...", flush=True)
        pgwarden("local", "up", "--dir", str(a.dir), "--nodes", "3")
        pgwarden("local", "up", "--dir", str(b.dir), "--nodes", "2", "--standby-of", str(a.dir))
        pg = a.config(a.nodes[0])["postgresql"]
        user, password = pg["superuser"]["username"], pg["superuser"]["password"]
        if args.link_rtt_ms > 0:
            link = Link.between([a, b], args.link_rtt_ms, pg["replication"]["username"])
            pgwarden("ctl", "-c", b.node_file(), "demote-cluster",
                     "--source", source_dsn(link.proxies[a.dir], link.replication_user))
            print(f"the sites reach each other through a {args.link_rtt_ms:g} ms round trip", flush=True)
        # The client sits in site A: B's members through the link.
        both = dsn([a, b], user, password, {b.dir: link.proxies[b.dir]} if link.proxies else None)
        linked = f"{args.link_rtt_ms:g} ms round trip (proxies)" if args.link_rtt_ms > 0 else "loopback"
        rows: list[tuple[str, str]] = [("link between the sites", linked)]
        if args.switchovers:
            r = switchovers(a, b, both, args.switchovers, link)
            med = statistics.median(r.pauses) if r.pauses else float("nan")
            rows.append(("planned site switchover: write pause, median / max (s)",
                         f"{med:.2f} / {max(r.pauses, default=float('nan')):.2f} over {len(r.pauses)}"))
            rows.append(("planned site switchover: acknowledged rows lost", str(r.lost)))
            rows.append(("planned site switchover: failed transactions", str(r.failed_transactions)))
            rows.append(("planned site switchover: pg_rewind or base backups", str(r.rewinds_or_clones)))
        # After an even number of switchovers A is the primary site again.
        primary_site, standby_site = (a, b) if args.switchovers % 2 == 0 else (b, a)
        lag = standby_lag(dsn([primary_site], user, password), standby_site.leader_dsn(user, password),
                          args.rate, args.lag_seconds)
        if lag:
            rows.append((f"standby site lag at {args.rate:g} writes/s: median / p99 (s)",
                         f"{statistics.median(lag):.3f} / {percentile(lag, 99):.3f} over {len(lag)} rows"))
        if not args.no_forced:
            took, first = forced_promotion(primary_site, standby_site, dsn([standby_site], user, password))
            rows.append(("forced promotion: command took (s)", f"{took:.2f}"))
            rows.append(("forced promotion: command to first write on the new site (s)", f"{first:.2f}"))
        width = max(len(k) for k, _ in rows)
        print()
        print(f"{'row'.ljust(width)} | value")
        print(f"{'-' * width}-|------")
        for k, v in rows:
            print(f"{k.ljust(width)} | {v}")
        return 0
    finally:
        link.close()
        for s in (b, a):
            if s.dir.exists():
                subprocess.run([sys.executable, "-m", "pgwarden", "local", "down", "--dir", str(s.dir)],
                               capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
