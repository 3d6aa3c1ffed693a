"""Writer workload, independent of the HA tool: threads insert unique ids through a multi-host DSN and
record, as the client sees it, every acknowledged commit and every failed transaction."""

from __future__ import annotations

import itertools
import threading
import time
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field

import psycopg
from psycopg.conninfo import make_conninfo

CREATE = (
    "CREATE TABLE IF NOT EXISTS bench_writes"
    "(id bigint PRIMARY KEY, writer int NOT NULL, at timestamptz NOT NULL DEFAULT now())"
)
# The current WAL file name starts with the timeline in hex: cheaper than pg_control_checkpoint(), and
# right after a promotion (which does not checkpoint at once) it already shows the new timeline.
WHOAMI = (
    "SELECT host(inet_server_addr()), inet_server_port(), "
    "('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int"
)
RECONNECT_PAUSE = 0.02  # bounds the retry rate while no primary is reachable


def client_dsn(dsn: str) -> str:
    """The DSN with the settings the workload depends on: primary only, fail fast on a dead host."""
    # make_conninfo accepts both URIs (as `pgwarden local dsn` prints) and key=value strings.
    return make_conninfo(dsn, target_session_attrs="read-write", connect_timeout=1,
                         application_name="bench_writer")


@dataclass(frozen=True)
class Ack:
    at: float  # time.monotonic() when the commit was acknowledged
    id: int
    writer: int
    server: str  # "addr:port" of the server that acknowledged
    timeline: int


@dataclass(frozen=True)
class Failure:
    at: float
    writer: int
    error: str  # exception class name
    connecting: bool  # True: no session could be opened; False: a transaction was attempted and failed


@dataclass
class History:
    """What the client saw. All times are time.monotonic()."""

    acks: list[Ack] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.acks.sort(key=lambda a: a.at)
        self.failures.sort(key=lambda f: f.at)
        self._times = [a.at for a in self.acks]

    def last_ack_before(self, t: float) -> Ack | None:
        i = bisect_right(self._times, t)
        return self.acks[i - 1] if i else None

    def first_ack_after(self, t: float, other_than: str | None = None) -> Ack | None:
        for ack in self.acks[bisect_right(self._times, t) :]:
            if other_than is None or ack.server != other_than:
                return ack
        return None

    def unavailability(self, fault_at: float) -> float | None:
        """(first ack after the fault) - (last ack before the fault), or None if either is missing."""
        before, after = self.last_ack_before(fault_at), self.first_ack_after(fault_at)
        return after.at - before.at if before and after else None

    def longest_gap(self, start: float, end: float) -> float:
        """Longest interval without any ack, over acks in [start, end] plus the ones just outside."""
        lo = max(bisect_left(self._times, start) - 1, 0)
        hi = min(bisect_right(self._times, end) + 1, len(self._times))
        times = self._times[lo:hi]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)

    def failover_pause(self, fault_at: float) -> tuple[float, float] | None:
        """(write pause, time the new primary acked first) around a fault that moves the primary.

        The pause is the longest ack gap from just before the fault to the first ack by another server.
        For a crash this is exactly unavailability(); for a switchover the old primary keeps acking for a
        while after the request, so the gap that matters opens later than the request itself.
        """
        before = self.last_ack_before(fault_at)
        if before is None:
            return None
        first_new = self.first_ack_after(fault_at, other_than=before.server)
        if first_new is None:
            return None
        return self.longest_gap(before.at, first_new.at), first_new.at

    def failed_transactions(self, start: float, end: float) -> int:
        return sum(1 for f in self.failures if start <= f.at <= end and not f.connecting)

    def failed_connects(self, start: float, end: float) -> int:
        return sum(1 for f in self.failures if start <= f.at <= end and f.connecting)

    def acked_ids(self) -> list[int]:
        return [a.id for a in self.acks]


def prepare(dsn: str) -> None:
    """Create the table (once) and empty it, so a reused cluster starts each run clean."""
    with psycopg.connect(client_dsn(dsn), autocommit=True) as conn:
        conn.execute(CREATE)
        conn.execute("TRUNCATE bench_writes")


def count_lost(dsn: str, ids: list[int], server: str | None = None) -> int:
    """How many acknowledged ids the current primary (or `server`, "addr:port") does not have."""
    conninfo = client_dsn(dsn)
    if server is not None:
        host, port = server.rsplit(":", 1)
        conninfo = make_conninfo(conninfo, host=host, port=port)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM unnest(%s::bigint[]) AS a(id) "
            "WHERE NOT EXISTS (SELECT 1 FROM bench_writes w WHERE w.id = a.id)",
            (ids,),
        ).fetchone()
    return int(row[0]) if row else len(ids)


class Workload:
    """N writer threads; each paces itself to at most `rate` commits per second."""

    def __init__(self, dsn: str, writers: int = 2, rate: float = 200.0) -> None:
        self._dsn = client_dsn(dsn)
        self._writers = writers
        self._interval = 1.0 / rate
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._ids = itertools.count(1)  # next() on a count is atomic under the GIL
        self._lock = threading.Lock()
        self._acks: list[Ack] = []
        self._failures: list[Failure] = []

    def start(self) -> None:
        for w in range(self._writers):
            t = threading.Thread(target=self._run, args=(w,), name=f"bench-writer-{w}", daemon=True)
            t.start()
            self._threads.append(t)

    def ack_count(self) -> int:
        with self._lock:
            return len(self._acks)

    def ack_after(self, t: float, other_than: str | None = None) -> Ack | None:
        """The latest ack later than `t` (from a server other than `other_than`, if given)."""
        with self._lock:
            for ack in reversed(self._acks):  # acks are appended in time order, near enough
                if ack.at <= t:
                    return None
                if other_than is None or ack.server != other_than:
                    return ack
        return None

    def last_ack(self) -> Ack | None:
        with self._lock:
            return self._acks[-1] if self._acks else None

    def stop(self, timeout: float = 15.0) -> History:
        self._stop.set()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            # A writer blocked in connect() gives up within connect_timeout per host.
            t.join(max(deadline - time.monotonic(), 0.1))
        with self._lock:
            return History(list(self._acks), list(self._failures))

    def _run(self, writer: int) -> None:
        while not self._stop.is_set():
            try:
                conn = psycopg.connect(self._dsn, autocommit=True)
            except psycopg.Error as e:
                self._fail(writer, e, connecting=True)
                self._stop.wait(RECONNECT_PAUSE)
                continue
            try:
                self._write(conn, writer)
            finally:
                conn.close()

    def _write(self, conn: psycopg.Connection[tuple[object, ...]], writer: int) -> None:
        try:
            row = conn.execute(WHOAMI).fetchone()
        except psycopg.Error as e:
            self._fail(writer, e, connecting=True)
            self._stop.wait(RECONNECT_PAUSE)
            return
        assert row is not None
        server, timeline = f"{row[0]}:{row[1]}", int(str(row[2]))
        next_at = time.monotonic()
        while not self._stop.is_set():
            wid = next(self._ids)
            try:
                conn.execute("INSERT INTO bench_writes (id, writer) VALUES (%s, %s)", (wid, writer))
            except psycopg.Error as e:
                self._fail(writer, e, connecting=False)
                return  # reconnect at once: the next attempt may find the new primary
            now = time.monotonic()
            with self._lock:
                self._acks.append(Ack(now, wid, writer, server, timeline))
            next_at = max(next_at + self._interval, now)
            self._stop.wait(max(next_at - time.monotonic(), 0.0))

    def _fail(self, writer: int, e: BaseException, connecting: bool) -> None:
        with self._lock:
            self._failures.append(Failure(time.monotonic(), writer, type(e).__name__, connecting))
