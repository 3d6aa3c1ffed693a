"""A bounded writer loop that records every acknowledged commit (and where it landed), to check
after a fault that none was lost and that no two servers accepted writes at once."""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field

import psycopg


@dataclass
class Ack:
    id: int
    at: float  # monotonic
    server: str  # host:port that acknowledged
    timeline: int


@dataclass
class Writer:
    dsn: str
    table: str = "acked"
    writer_id: int = 0
    acks: list[Ack] = field(default_factory=list)
    errors: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def prepare(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as c:
            c.execute(f"CREATE TABLE IF NOT EXISTS {self.table} (id bigint PRIMARY KEY, writer int)")

    def start(self, max_seconds: float = 120.0) -> None:
        self._thread = threading.Thread(target=self._run, args=(max_seconds,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def _run(self, max_seconds: float) -> None:
        end = time.monotonic() + max_seconds
        n = self.writer_id * 1_000_000_000
        conn: psycopg.Connection[tuple[object, ...]] | None = None
        server, tl = "", 0
        while not self._stop.is_set() and time.monotonic() < end:
            try:
                if conn is None:
                    conn = psycopg.connect(self.dsn, autocommit=True)
                    row = conn.execute(
                        "SELECT inet_server_addr()::text || ':' || inet_server_port(), "
                        "substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)").fetchone()
                    assert row is not None
                    # The checkpoint's timeline lags a promotion; the WAL file name does not.
                    server, tl = str(row[0]), int(str(row[1]), 16)
                n += 1
                conn.execute(f"INSERT INTO {self.table} VALUES (%s, %s)", (n, self.writer_id))
                self.acks.append(Ack(n, time.monotonic(), server, tl))
            except psycopg.Error:
                self.errors += 1
                if conn is not None:
                    conn.close()
                conn = None
                self._stop.wait(0.02)
        if conn is not None:
            conn.close()

    def missing_on(self, conninfo: str) -> list[int]:
        with psycopg.connect(conninfo, autocommit=True) as c:
            present = {r[0] for r in c.execute(f"SELECT id FROM {self.table}").fetchall()}
        return [a.id for a in self.acks if a.id not in present]

    def max_gap(self) -> float:
        times = [a.at for a in self.acks]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)
