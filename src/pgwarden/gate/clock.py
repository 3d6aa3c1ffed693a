"""The gate's view of the source primary's synchronously confirmed position, read from the local
server only while some connection is holding a message back (an idle gate costs nothing).

One reader thread serves every connection: each waiter says how far it needs the position to
reach; the thread polls the server every `interval` until no waiter is left.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

import psycopg

from pgwarden.core.gate import confirmed_lsn
from pgwarden.core.model import ReplicationStat, lsn_to_int
from pgwarden.postgres.sync_names import SyncNamesError, parse_sync_standby_names

log = logging.getLogger("pgwarden.gate")

CONFIRMED_QUERY = """
SELECT pg_is_in_recovery(),
       current_setting('synchronous_standby_names'),
       CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_flush_lsn()::text END,
       (SELECT coalesce(json_agg(json_build_object(
                 'name', application_name, 'state', state, 'flush_lsn', flush_lsn::text)), '[]'::json)
          FROM pg_stat_replication)
"""


def read_confirmed(conn: psycopg.Connection[Any]) -> tuple[bool, int | None]:
    """Whether the server is in recovery, and its confirmed position (None: nothing is)."""
    row = conn.execute(CONFIRMED_QUERY).fetchone()
    if row is None:
        return False, None
    in_recovery, names, flush, rep = row
    try:
        sync = parse_sync_standby_names(str(names))
    except SyncNamesError as e:  # the server would not run with it; hold everything
        log.warning("synchronous_standby_names %r: %s", names, e)
        return bool(in_recovery), None
    stats = [ReplicationStat(str(r["name"]), str(r["state"]), "", lsn_to_int(r["flush_lsn"]))
             for r in rep or ()]
    return bool(in_recovery), confirmed_lsn(sync, stats, lsn_to_int(flush), bool(in_recovery))


class ConfirmedClock:
    """`await wait_beyond(lsn, timeout)` (on the gate's event loop): the confirmed position once a
    read made after the call shows it at least `lsn`, None at the timeout."""

    def __init__(self, connect: Callable[[], psycopg.Connection[Any]], interval: float = 0.005) -> None:
        self._connect = connect
        self._interval = interval
        self._cond = threading.Condition()
        self._listeners: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self._confirmed: int | None = None
        self.in_recovery = False  # the last read found the server in recovery (a standby)
        self._stopped = False
        self._conn: psycopg.Connection[Any] | None = None
        self._thread = threading.Thread(target=self._run, name="pgwarden-gate-clock", daemon=True)
        self._thread.start()

    async def wait_beyond(self, lsn: int, timeout: float) -> int | None:
        """Never answers from a read older than the call: the position can go back (a synchronous
        standby went away), and a message read after an old answer was not covered by it."""
        loop = asyncio.get_running_loop()
        event = asyncio.Event()
        me = (loop, event)
        deadline = loop.time() + timeout
        with self._cond:
            self._listeners.add(me)
            self._cond.notify_all()
        try:
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return None
                try:
                    await asyncio.wait_for(event.wait(), remaining)
                except TimeoutError:
                    return None
                event.clear()
                with self._cond:
                    value = self._confirmed
                if self._stopped:
                    return None
                if value is not None and value >= lsn:
                    return value
        finally:
            with self._cond:
                self._listeners.discard(me)

    @property
    def confirmed(self) -> int | None:
        """The last read (logs and status)."""
        return self._confirmed

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._stopped or bool(self._listeners))
                if self._stopped:
                    break
            value = self._read()
            with self._cond:
                self._confirmed = value
                listeners = list(self._listeners)
            for loop, event in listeners:
                try:
                    loop.call_soon_threadsafe(event.set)
                except RuntimeError:  # that loop has closed
                    pass
            with self._cond:
                self._cond.wait_for(lambda: self._stopped, self._interval)
        if self._conn is not None:
            self._conn.close()

    def _read(self) -> int | None:
        try:
            if self._conn is None or self._conn.closed:
                self._conn = self._connect()
            self.in_recovery, value = read_confirmed(self._conn)
            return value
        except Exception as e:  # psycopg's, or a row it could not read: never end the thread
            log.log(logging.DEBUG if isinstance(e, psycopg.Error) else logging.WARNING,
                    "reading the confirmed position: %s", e)
            self.in_recovery = False  # not known: never turn a client away on an old reading
            if self._conn is not None:
                self._conn.close()
            self._conn = None
            with self._cond:  # a server that is down is not polled in a tight loop
                self._cond.wait_for(lambda: self._stopped, 0.2)
            return None
