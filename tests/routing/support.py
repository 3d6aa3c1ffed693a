"""A local cluster with HAProxy and PgBouncer in front (`local up --haproxy --pgbouncer`), and a
bounded client load that records every transaction's outcome and latency."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import yaml

from pgwarden.local.haproxy import server_states
from tests.support.cluster import Cluster, pgwarden


class RoutingCluster(Cluster):
    def up(self) -> None:
        pgwarden("local", "up", "--nodes", str(self.nodes), "--dir", str(self.dir),
                 "--haproxy", "--pgbouncer")

    def via(self, via: str, replicas: bool = False) -> str:
        args = ["local", "dsn", "--dir", str(self.dir), "--via", via] + (["--replicas"] if replicas else [])
        return pgwarden(*args).stdout.strip().splitlines()[-1]

    def haproxy_states(self) -> dict[tuple[str, str], str]:
        return server_states(self.dir / "haproxy" / "admin.sock")

    def pg_port(self, node: str) -> int:
        return int(self.config(node)["postgresql"]["port"])

    def set_tags(self, node: str, tags: dict[str, Any]) -> None:
        """Tags live in each node's file: stop the node, write them, start it again."""
        self.stop_node(node)
        path = Path(self.config_path(node))
        doc = yaml.safe_load(path.read_text())
        doc["tags"] = {**doc.get("tags", {}), **tags}
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        self.start_node(node)


@dataclass
class Tx:
    started: float
    ended: float
    ok: bool
    server_port: int | None
    error: str = ""


@dataclass
class Load:
    """One client running short write transactions back to back, for at most `max_seconds` and
    `max_tx` transactions. A failed transaction is recorded, then the client reconnects."""

    dsn: str
    table: str = "routing_load"
    txs: list[Tx] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def prepare(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True, prepare_threshold=None) as c:
            c.execute(f"CREATE TABLE IF NOT EXISTS {self.table} (id bigserial PRIMARY KEY, at float8)")

    def start(self, max_seconds: float = 60.0, max_tx: int = 200_000) -> None:
        self._thread = threading.Thread(target=self._run, args=(max_seconds, max_tx), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def _run(self, max_seconds: float, max_tx: int) -> None:
        end = time.monotonic() + max_seconds
        conn: psycopg.Connection[tuple[Any, ...]] | None = None
        while not self._stop.is_set() and time.monotonic() < end and len(self.txs) < max_tx:
            t0 = time.monotonic()
            try:
                if conn is None:
                    # PgBouncer 1.18 in transaction pooling cannot keep prepared statements.
                    conn = psycopg.connect(self.dsn, autocommit=True, prepare_threshold=None)
                with conn.transaction():
                    conn.execute(f"INSERT INTO {self.table} (at) VALUES (%s)", (t0,))
                    row = conn.execute("SELECT inet_server_port()").fetchone()
                self.txs.append(Tx(t0, time.monotonic(), True, int(row[0]) if row else None))
            except psycopg.Error as e:
                self.txs.append(Tx(t0, time.monotonic(), False, None, str(e).strip()[:200]))
                if conn is not None:
                    conn.close()
                conn = None
                self._stop.wait(0.02)
        if conn is not None:
            conn.close()

    def failures(self) -> list[Tx]:
        return [t for t in self.txs if not t.ok]

    def longest(self) -> float:
        return max((t.ended - t.started for t in self.txs), default=0.0)

    def ok_on(self, port: int) -> int:
        return sum(1 for t in self.txs if t.ok and t.server_port == port)
