"""Kept-alive HTTP/1.1 connections to one etcd gateway host, each request bounded by the caller's
deadline; the bytes on the wire are store/http_wire.py's.

Why not urllib3's pool manager, as at first, or `http.client`, as next: an idle agent makes two to
four gateway calls every loop, and each layer's generality (URL parsing, header dictionaries, the
`email` header parser, response wrappers) cost more CPU than the call itself (issue 16): about
0.41 ms per call through the pool manager, 0.20 ms through `http.client`, 0.05 ms here.
Connections are reused while the server keeps them open; any error closes the connection it
happened on, so the next call starts on a fresh one.
"""

from __future__ import annotations

import http.client
import select
import socket
import ssl
import threading
import time
from collections.abc import Iterator, Mapping
from typing import BinaryIO
from urllib.parse import urlsplit

from pgwarden.store.http_wire import encode_post, iter_chunks, read_head, read_response

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
        # The Host header, as http.client writes it: the port only when it is not the default.
        default = 443 if self.https else 80
        name = f"[{self.host}]" if ":" in self.host else self.host
        self._host_header = name if self.port == default else f"{name}:{self.port}"
        self._lock = threading.Lock()
        self._idle: list[_Conn] = []

    def _connect(self, timeout: float) -> _Conn:
        sock = socket.create_connection((self.host, self.port), timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as http.client does
            if self.https:
                ctx = self._ssl_context if self._ssl_context is not None else ssl.create_default_context()
                sock = ctx.wrap_socket(sock, server_hostname=self.host)  # handshake within timeout
        except BaseException:
            sock.close()
            raise
        return _Conn(sock)

    def _take(self) -> _Conn | None:
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None or not _dropped(conn):
                return conn
            conn.close()  # closed by the server while idle: not worth a failed attempt

    def _give(self, conn: _Conn) -> None:
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
        request = encode_post(self._host_header, path, headers, body)
        conn = self._take()
        try:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlinePassed("no time left to ask")
            if conn is None:
                conn = self._connect(remaining)
            else:
                conn.sock.settimeout(remaining)
            conn.sock.sendall(request)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlinePassed("timed out")
            conn.sock.settimeout(remaining)
            status, will_close, data = read_response(conn.rfile)
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        if will_close:
            conn.close()
        else:
            self._give(conn)
        return status, data

    def open_stream(self, path: str, body: bytes, headers: Mapping[str, str], connect_timeout: float,
                    idle: float) -> Stream:
        """POST on a connection of its own (a stream holds it until it ends): connecting and
        sending within `connect_timeout`, the answer's head within `idle` (StreamIdle past it).
        The etcd watch's request; read its body with `Stream.chunks`."""
        conn = self._connect(connect_timeout)
        try:
            conn.sock.settimeout(connect_timeout)
            conn.sock.sendall(encode_post(self._host_header, path, headers, body))
            conn.sock.settimeout(idle)
            try:
                status, _, _, chunked = read_head(conn.rfile)
            except TimeoutError as e:
                raise StreamIdle(f"no answer within {idle:g} s") from e
        except BaseException:
            conn.close()
            raise
        return Stream(conn, status, chunked)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


class StreamIdle(TimeoutError):
    """A stream sent nothing for its idle bound (the server may be frozen or cut off, or just
    have nothing to say)."""


class Stream:
    """A response read as it arrives: its status, then the chunks of its chunked body."""

    def __init__(self, conn: _Conn, status: int, chunked: bool) -> None:
        self._conn = conn
        self.status = status
        self.chunked = chunked

    def chunks(self, idle: float) -> Iterator[bytes]:
        """The body's chunks as they come; StreamIdle when none comes for `idle` seconds,
        http.client.HTTPException or OSError when the stream breaks."""
        if not self.chunked:
            raise http.client.HTTPException("the answer is not a stream (no chunked body)")
        self._conn.sock.settimeout(idle)
        try:
            yield from iter_chunks(self._conn.rfile)
        except TimeoutError as e:
            raise StreamIdle(f"nothing for {idle:g} s") from e

    def shutdown(self) -> None:
        """End a read blocked in `chunks` from another thread (it raises or ends at once)."""
        try:
            self._conn.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed or never connected: nothing is blocked on it

    def close(self) -> None:
        self._conn.close()


class _Conn:
    """One kept connection: the socket and the buffered reader its responses are read from."""

    __slots__ = ("rfile", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.rfile: BinaryIO = sock.makefile("rb")

    def close(self) -> None:
        self.rfile.close()
        self.sock.close()


def _dropped(conn: _Conn) -> bool:
    """An idle kept-alive connection with something to read has been closed by the server (or
    holds bytes nobody asked for): either way it cannot carry the next request. urllib3 checks
    the same before reusing a pooled connection."""
    sock = conn.sock
    if sock.fileno() < 0:  # closed here
        return True
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))
