"""How many connections the REST API serves at once, and which ones give way when it is full.

Each connection has a thread of its own (transport.py), so the number of connections is the
number of threads: capped here (`restapi.max_connections`, 64 by default). At the cap the accept
thread stops accepting: new connections wait in the kernel's listen backlog, not in threads, and
are served as soon as a slot frees. Answering 503 instead would be wrong for this API: a load
balancer reads a 503 from /primary as "not the primary".

Who frees a slot: every request has deadlines (transport.py), but a client that trickles a byte
every few seconds, or an idle keep-alive connection, would hold its slot until its deadline. So
when the API is full, every connection that has been waiting longer than `SHED_AFTER` for a
complete request head is closed at once (`shed`): a health checker sends its whole request in
one packet and is never waiting that long, a slow-loris client always is. Connections with a
request in progress are never shed.
"""

from __future__ import annotations

import socket
import threading
import time

DEFAULT_MAX_CONNECTIONS = 64
# Waiting this long for a request's head (or the next one on a keep-alive connection) gives a
# connection up when the API is full.
SHED_AFTER = 1.0


class Slot:
    """One connection's place: its socket and since when it has waited for a request head (None
    while a request is being served)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        # None until its thread first waits for a request: a connection accepted but whose thread
        # has not run yet (a loaded machine) has not made anyone wait and is not shed.
        self.waiting_since: float | None = None

    def waiting(self) -> None:
        self.waiting_since = time.monotonic()

    def busy(self) -> None:
        self.waiting_since = None


class ConnectionSlots:
    """At most `limit` connections, shared by every listening socket of one ApiServer."""

    def __init__(self, limit: int = DEFAULT_MAX_CONNECTIONS) -> None:
        if limit < 1:
            raise ValueError("the connection limit must be at least 1")
        self.limit = limit
        self._open: set[Slot] = set()
        self._cond = threading.Condition()

    def __len__(self) -> int:
        with self._cond:
            return len(self._open)

    def wait_free(self, timeout: float) -> bool:
        """Whether a slot is free, waiting up to `timeout` for one."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self._open) < self.limit, timeout)

    def take(self, sock: socket.socket) -> Slot:
        """A slot for `sock`; the caller checked `wait_free` (only the accept thread takes)."""
        slot = Slot(sock)
        with self._cond:
            self._open.add(slot)
        return slot

    def release(self, slot: Slot) -> None:
        with self._cond:
            self._open.discard(slot)
            self._cond.notify_all()

    def shed(self, now: float, after: float = SHED_AFTER) -> int:
        """Close every connection waiting for a request head for longer than `after`; how many."""
        with self._cond:
            stale = [s for s in self._open if s.waiting_since is not None and now - s.waiting_since > after]
        for slot in stale:
            try:  # its thread's recv returns at once and the thread releases the slot
                slot.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        return len(stale)
