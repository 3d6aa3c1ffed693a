"""Kept-alive HTTP/1.1 connections to one etcd gateway host, on the standard library's
`http.client`, each request bounded by the caller's deadline.

Why not urllib3's pool manager, as before: an idle agent makes two to four gateway calls every
loop, and the same call through the pool manager costs about twice the CPU (URL parsing, header
dictionaries, response wrappers) for nothing this client uses (issue 16). Connections are reused
while the server keeps them open; any error closes the connection it happened on, so the next
call starts on a fresh one.
"""

from __future__ import annotations

import http.client
import select
import ssl
import threading
import time
from collections.abc import Mapping
from urllib.parse import urlsplit

MAX_IDLE = 4  # idle connections kept per host (the agent's loop and its watch need one each)


class DeadlinePassed(TimeoutError):
    """The call's deadline passed between sending the request and reading the answer."""


class HostConnections:
    """Kept-alive connections to the host of `url` (http, or https with `ssl_context`)."""

    def __init__(self, url: str, ssl_context: ssl.SSLContext | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url}")
        self.https = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.https else 80)
        self._ssl_context = ssl_context
        self._lock = threading.Lock()
        self._idle: list[http.client.HTTPConnection] = []

    def _new(self) -> http.client.HTTPConnection:
        if self.https:
            ctx = self._ssl_context if self._ssl_context is not None else ssl.create_default_context()
            return http.client.HTTPSConnection(self.host, self.port, context=ctx)
        return http.client.HTTPConnection(self.host, self.port)

    def _take(self) -> http.client.HTTPConnection | None:
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None or not _dropped(conn):
                return conn
            conn.close()  # closed by the server while idle: not worth a failed attempt

    def _give(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < MAX_IDLE:
                self._idle.append(conn)
                return
        conn.close()

    def post(self, path: str, body: bytes, headers: Mapping[str, str],
             deadline: float) -> tuple[int, bytes]:
        """POST `body`; (status, response body). Raises OSError (ConnectionRefusedError when a
        new connection was refused, TimeoutError past the deadline) or http.client.HTTPException.

        The deadline bounds connecting, sending and each read, as urllib3's `Timeout(total=...)`
        did: a server that stops answering is given up on when the deadline passes."""
        conn = self._take()
        if conn is None:
            conn = self._new()
        try:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlinePassed("no time left to ask")
            if conn.sock is None:
                conn.timeout = remaining
                conn.connect()
            else:
                conn.sock.settimeout(remaining)
            conn.request("POST", path, body=body, headers=dict(headers))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlinePassed("timed out")
            conn.sock.settimeout(remaining)
            resp = conn.getresponse()
            data = resp.read()
        except BaseException:
            conn.close()
            raise
        if resp.will_close:
            conn.close()
        else:
            self._give(conn)
        return resp.status, data

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


def _dropped(conn: http.client.HTTPConnection) -> bool:
    """An idle kept-alive connection with something to read has been closed by the server (or
    holds bytes nobody asked for): either way it cannot carry the next request. urllib3 checks
    the same before reusing a pooled connection."""
    sock = conn.sock
    if sock is None:
        return True
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))
