"""An HTTP service's lifecycle: the listening sockets (one per address the host resolves to), the
accept thread and the connection cap (limits.py), serving each request through `dispatch` on the
transport's threads (transport.py). The agent's REST API (server.py) and the witness' health
endpoint both run on it, so both get the same limits and deadlines.
"""

from __future__ import annotations

import logging
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

from pgwarden.api.limits import DEFAULT_MAX_CONNECTIONS, ConnectionSlots
from pgwarden.api.messages import Route
from pgwarden.api.transport import Listener

# The name the API's log lines have always carried (the agent's log format shows it).
log = logging.getLogger("pgwarden.api.server")

_STOP_TIMEOUT = 10.0
_FULL_POLL = 0.1  # while every connection slot is taken: how often to shed and check for stop()


class ServiceError(RuntimeError):
    """The service could not start (typically: the port is taken)."""


class HttpService:
    """Serves `dispatch` on host:port, on threads of its own. `start()` returns once listening."""

    def __init__(self, host: str, port: int, dispatch: Route, *,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 tls: Callable[[], ssl.SSLContext] | None = None) -> None:
        self.host = host
        self.port = port
        self.dispatch = dispatch
        self.tls = tls  # None: plain HTTP; else HTTPS with the context it returns for each connection
        self._slots = ConnectionSlots(max_connections)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._servers: list[Listener] = []
        self._wake: tuple[socket.socket, socket.socket] | None = None
        self._bound_port: int | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://{host}:{self._bound_port or self.port}"

    def start(self) -> None:
        if self._thread is not None:
            raise ServiceError("already started")
        try:
            servers = self._listen()
        except OSError as e:
            reason = e.strerror or str(e)
            raise ServiceError(f"cannot listen on {self.host}:{self.port}: {reason}") from e
        self._servers = servers
        self._bound_port = servers[0].server_port
        self._wake = socket.socketpair()
        self._stopping.clear()
        self._thread = threading.Thread(target=self._accept_loop, args=(servers, self._wake[0]),
                                        name="pgwarden-api", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting; idle keep-alive connections end at once, a request in progress still
        gets its answer."""
        thread, wake, servers = self._thread, self._wake, self._servers
        if thread is None or wake is None:
            return
        self._thread, self._wake, self._servers = None, None, []
        self._stopping.set()
        try:
            wake[1].send(b"x")
        except OSError:
            pass
        thread.join(_STOP_TIMEOUT)
        for server in servers:
            server.server_close()

        for s in wake:
            s.close()

    def _listen(self) -> list[Listener]:
        """A socket per address the host resolves to (an empty host: all of them, IPv4 and IPv6)."""
        infos = socket.getaddrinfo(self.host or None, self.port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
        servers: list[Listener] = []
        seen: set[tuple[Any, ...]] = set()
        try:
            for family, _, _, _, sockaddr in infos:
                key = (family, *sockaddr[:2])
                if key not in seen:
                    seen.add(key)
                    servers.append(Listener(family, tuple(sockaddr), self.dispatch, self.tls, self._slots))
        except BaseException:
            for server in servers:
                server.server_close()
            raise
        return servers

    @property
    def connections(self) -> int:
        """Connections open now (each has a thread)."""
        return len(self._slots)

    def _accept_loop(self, servers: list[Listener], wake: socket.socket) -> None:
        """Accept while a connection slot is free; when none is, new connections wait in the
        listen backlog and connections idling before a request head are shed (see limits.py)."""
        with selectors.DefaultSelector() as sel:
            for server in servers:
                sel.register(server.socket, selectors.EVENT_READ, server)
            sel.register(wake, selectors.EVENT_READ, None)
            while True:
                while not self._slots.wait_free(0):
                    if self._stopping.is_set():
                        return
                    if shed := self._slots.shed(time.monotonic()):
                        log.debug("REST API: %d connections at the limit; shed %d waiting for a request",
                                  self._slots.limit, shed)
                    self._slots.wait_free(_FULL_POLL)
                ready = sel.select()
                if not ready:
                    continue
                if any(key.data is None for key, _ in ready):
                    return
                try:  # one connection per free slot: the loop checks for a slot again first
                    ready[0][0].data.accept()
                except Exception:
                    log.exception("REST API: cannot accept a connection")

