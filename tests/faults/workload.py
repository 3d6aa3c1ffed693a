"""The fault-injection workload: concurrent writer threads inserting unique ids through the
cluster's multi-host read-write DSN, recording every acknowledged commit (id, send and ack times,
the acknowledging server and its timeline) and every failure, for `checker.py`.

No `statement_timeout`: cancelling a commit that waits for a synchronous standby makes
PostgreSQL report success with a WARNING although the commit may not be replicated. Dead servers
are detected by TCP keepalives and `tcp_user_timeout` instead, and a commit that still carries
that warning is recorded as indeterminate, never as acknowledged.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import psycopg

from tests.faults.checker import Ack, Failure

TABLE = "fault_acks"
SYNC_CANCEL_TEXT = "synchronous replication"  # in "canceling wait for synchronous replication ..."


def dsn(hosts: Sequence[str], port: int, user: str, password: str) -> str:
    """libpq multi-host, read-write: every connection lands on whichever server accepts writes."""
    return (f"host={','.join(hosts)} port={','.join(str(port) for _ in hosts)} user={user} "
            f"password={password} dbname=postgres target_session_attrs=read-write connect_timeout=1 "
            f"keepalives=1 keepalives_idle=1 keepalives_interval=1 keepalives_count=2 "
            f"tcp_user_timeout=3000 application_name=pgwarden-faults")


@dataclass
class Writer:
    dsn: str
    writer_id: int
    acks: list[Ack] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    conn: psycopg.Connection[tuple[object, ...]] | None = None
    pause: threading.Event | None = None  # set: finish the commit in flight, then wait
    idle: threading.Event = field(default_factory=threading.Event)  # set while paused, nothing in flight
    _warned: bool = False

    def _connect(self) -> tuple[psycopg.Connection[tuple[object, ...]], str, int]:
        conn = psycopg.connect(self.dsn, autocommit=True)
        try:
            conn.add_notice_handler(self._notice)
            row = conn.execute(
                "SELECT host(inet_server_addr()) || ':' || inet_server_port(), "
                "substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)").fetchone()
            assert row is not None
            # The checkpoint's timeline lags a promotion; the current WAL file's name does not.
            return conn, str(row[0]), int(str(row[1]), 16)
        except BaseException:
            conn.close()
            raise

    def _notice(self, diag: psycopg.errors.Diagnostic) -> None:
        if SYNC_CANCEL_TEXT in (diag.message_primary or ""):
            self._warned = True

    def run(self, stop: threading.Event, until: float) -> None:
        n = self.writer_id * 1_000_000_000
        server, tl = "", 0
        while not stop.is_set() and time.monotonic() < until:
            self.idle.clear()  # before looking at pause: pause() then never sees a stale idle
            if self.pause is not None and self.pause.is_set():
                self.idle.set()
                stop.wait(0.02)
                continue
            if self.conn is None:
                try:
                    self.conn, server, tl = self._connect()
                except (psycopg.Error, AssertionError, ValueError) as e:
                    self._close()
                    self.failures.append(
                        Failure(self.writer_id, None, time.monotonic(), "connect", _short(e)))
                    stop.wait(0.05)
                    continue
            n += 1
            self._warned = False
            sent = time.monotonic()
            try:
                self.conn.execute(f"INSERT INTO {TABLE} VALUES (%s, %s)", (n, self.writer_id))
            except (psycopg.Error, OSError) as e:
                self._close()
                self.failures.append(Failure(self.writer_id, n, time.monotonic(), "write", _short(e)))
                stop.wait(0.02)
                continue
            at = time.monotonic()
            if self._warned:
                self.failures.append(Failure(self.writer_id, n, at, "indeterminate",
                                             "commit returned with a synchronous replication warning"))
                continue
            self.acks.append(Ack(n, self.writer_id, sent, at, server, tl))
        self._close()
        self.idle.set()

    def _close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                conn.close()
            except psycopg.Error:
                pass


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:200]


@dataclass
class Workload:
    """`start()` N writers, `stop()` them (bounded), then read `acks`/`failures`."""

    dsn: str
    writers: int = 4
    max_seconds: float = 600.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _pause: threading.Event = field(default_factory=threading.Event)
    _workers: list[Writer] = field(default_factory=list)
    _threads: list[threading.Thread] = field(default_factory=list)

    def prepare(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.dsn, autocommit=True) as c:
                    c.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (id bigint PRIMARY KEY, writer int)")
                return
            except psycopg.Error:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def start(self) -> None:
        until = time.monotonic() + self.max_seconds
        for i in range(1, self.writers + 1):
            w = Writer(self.dsn, i, pause=self._pause)
            t = threading.Thread(target=w.run, args=(self._stop, until), name=f"writer{i}", daemon=True)
            self._workers.append(w)
            self._threads.append(t)
            t.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the writers; a writer blocked in a commit (say, waiting for a synchronous standby
        that never comes) is cancelled after `timeout`, and its outcome recorded as
        indeterminate by the notice handler or as a failed write."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        for w, t in zip(self._workers, self._threads, strict=True):
            if t.is_alive() and w.conn is not None:
                try:
                    w.conn.cancel_safe(timeout=2.0)
                except (psycopg.Error, AttributeError):
                    pass
        for t in self._threads:
            t.join(10.0)
        stuck = [t.name for t in self._threads if t.is_alive()]
        if stuck:
            raise AssertionError(f"writers still blocked after {timeout + 10:g}s: {stuck}")

    def pause(self, timeout: float = 60.0) -> bool:
        """Stop issuing writes and wait until no writer has a commit in flight (every commit
        sent so far has returned, acknowledged or not). False when one is still in flight after
        `timeout` (say, a commit waiting for a synchronous standby); writers stay paused."""
        self._pause.set()
        deadline = time.monotonic() + timeout
        while not all(w.idle.is_set() for w in self._workers):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def resume(self) -> None:
        self._pause.clear()

    def progress(self) -> int:
        return sum(len(w.acks) for w in self._workers)

    @property
    def acks(self) -> list[Ack]:
        return sorted((a for w in self._workers for a in w.acks), key=lambda a: a.at)

    @property
    def failures(self) -> list[Failure]:
        return sorted((f for w in self._workers for f in w.failures), key=lambda f: f.at)

    def last_ack_after(self, since: float) -> bool:
        return any(a.at > since for w in self._workers for a in w.acks[-5:])
