"""The loop's health query on one kept connection to the local server, and a cheap check that the
postmaster still accepts new connections.

A new connection every loop (fork, authentication, backend start) costs the agent about 0.6 ms of
CPU and the server a backend start, every second, for nothing (issue 16). The loop therefore keeps
one connection over the local Unix socket, with the same connect and statement timeouts, and drops
it on any error: the next attempt connects afresh. A kept connection the server ended (restart,
pg_terminate_backend) is tried once more on a fresh one within the same budget, so such a loop
still reports what a fresh connection would have.

A backend that answers says nothing about the postmaster, which must still accept connections
(a frozen postmaster counts as unhealthy, see test_frozen_postmaster_is_unhealthy_within_timeout).
So every query is preceded by `postmaster_answers`: over the Unix socket, an SSLRequest, which the
postmaster's freshly forked child answers with 'N' (never SSL on a Unix socket) before any
authentication; the client then hangs up, which the server does not log. Over TCP (no socket
directory) the answer could be 'S' and the aborted handshake would be logged every loop, so there
the loop keeps opening a connection of its own each time, as before.

Settings a reload changed are seen by the kept session too: the postmaster signals its children
before it forks any new backend, and a backend applies a pending reload before it runs the next
query it reads. So once a fresh session shows a reloaded value (`_reload_and_wait`), every later
health query on the kept one does as well.
"""

from __future__ import annotations

import select
import socket
import struct
import time
from typing import Any

import psycopg

from pgwarden.postgres import sql

# PostgreSQL's SSLRequest: length 8, then the code 1234.5679 (protocol.h NEGOTIATE_SSL_CODE).
SSL_REQUEST = struct.pack("!ii", 8, 80877103)


class PostmasterSilent(psycopg.OperationalError):
    """The postmaster did not answer a connection attempt in time."""


def unix_socket(params: sql.ConnParams) -> str | None:
    """The socket file `params` connects through, or None for TCP."""
    if not params.host.startswith("/"):
        return None
    return f"{params.host.rstrip('/')}/.s.PGSQL.{params.port}"


def postmaster_answers(path: str, timeout: float) -> None:
    """Raise PostmasterSilent unless a new connection to the socket at `path` is answered (by the
    child the postmaster forks for it) within `timeout`."""
    if timeout <= 0:
        raise PostmasterSilent("no time left to ask the postmaster")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(path)
            s.sendall(SSL_REQUEST)
            answer = s.recv(1)
    except OSError as e:
        raise PostmasterSilent(f"the postmaster did not answer on {path}: {e}") from e
    if answer not in (b"N", b"S"):
        raise PostmasterSilent(f"unexpected answer {answer!r} from the postmaster on {path}")


class QueryTimedOut(psycopg.OperationalError):
    """The kept session did not answer the health query in time (it has been dropped)."""


def _wait_io(fd: int, events: int, deadline: float) -> None:
    left = deadline - time.monotonic()
    poller = select.poll()
    poller.register(fd, events)
    if left <= 0 or not poller.poll(left * 1000):
        raise QueryTimedOut("the health query had no answer in time")


def _exec_bounded(conn: psycopg.Connection[Any], deadline: float) -> sql.Health:
    """The prepared health query on `conn` (psycopg keeps libpq non-blocking), every wait for
    its socket bounded by `deadline`: no thread is needed to give up on a silent server."""
    pg = conn.pgconn
    fd = pg.socket
    pg.send_query_prepared(sql.HEALTH_STATEMENT, None)
    while pg.flush():
        _wait_io(fd, select.POLLOUT | select.POLLIN, deadline)
        pg.consume_input()
    results = []
    while True:
        pg.consume_input()
        if pg.is_busy():
            _wait_io(fd, select.POLLIN, deadline)
            continue
        res = pg.get_result()
        if res is None:
            break
        results.append(res)
    if len(results) != 1:
        raise psycopg.InterfaceError(f"health query returned {len(results)} results")
    return sql.health_from_result(conn, results[0])


class HealthConnection:
    """The health query on a kept connection, for one caller at a time (the loop's probe)."""

    def __init__(self) -> None:
        self._conn: psycopg.Connection[Any] | None = None
        self._key: tuple[sql.ConnParams, int] | None = None  # what it was opened for

    def close(self) -> None:
        conn, self._conn, self._key = self._conn, None, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # a broken connection may fail to close: it is gone either way
                pass

    def kept_for(self, params: sql.ConnParams, postmaster_pid: int) -> bool:
        """A kept session is open for these parameters and this postmaster."""
        return self._conn is not None and self._key == (params, postmaster_pid) and not self._conn.closed

    def query_kept(self, params: sql.ConnParams, postmaster_pid: int, timeout: float) -> sql.Health | None:
        """`query` on the caller's thread while a session is kept (`kept_for`): the postmaster
        check, then the kept session's query, each wait bounded by `timeout`. Raises
        PostmasterSilent, or QueryTimedOut once the session has been dropped. None when there is
        no kept session, or the kept one failed (and was dropped): `query` then asks on a fresh
        connection, which may take longer than a socket wait (libpq's connect timeout) and so
        belongs on the probe thread."""
        if not self.kept_for(params, postmaster_pid) or self._conn is None:
            return None
        deadline = time.monotonic() + timeout
        path = unix_socket(params)
        if path is None:
            return None
        postmaster_answers(path, timeout)
        try:
            return _exec_bounded(self._conn, deadline)
        except QueryTimedOut:
            self.close()  # a query in flight: the session cannot be asked again
            raise
        except psycopg.Error:
            self.close()  # ended by the server, say: `query` tries a fresh connection
            return None

    def query(self, params: sql.ConnParams, postmaster_pid: int, timeout: float) -> sql.Health:
        """The health query within `timeout`; raises (psycopg.Error, OSError) when the server
        does not answer, exactly when a fresh connection would have failed too."""
        deadline = time.monotonic() + timeout
        path = unix_socket(params)
        if path is None:  # TCP: a connection of its own every time (see the module doc)
            self.close()
            with sql.connect(params, timeout) as conn:
                return sql.query_health(conn)
        postmaster_answers(path, timeout)
        key = (params, postmaster_pid)
        if self._conn is not None and (self._key != key or self._conn.closed):
            self.close()  # another postmaster (a restart) or other parameters: start afresh
        if self._conn is not None:
            try:
                return sql.query_health(self._conn, prepared=True)
            except psycopg.Error:
                self.close()  # ended by the server, say: once more on a fresh connection
        left = deadline - time.monotonic()
        if left <= 0:
            raise PostmasterSilent("no time left for the health query")
        self._conn, self._key = sql.connect(params, left), key
        try:
            sql.prepare_health(self._conn)
            return sql.query_health(self._conn, prepared=True)
        except BaseException:
            self.close()
            raise
