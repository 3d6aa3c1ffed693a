"""A TCP proxy on loopback that forwards bytes both ways and can hold every chunk for a one-way
delay set at run time: latency for a link when the kernel has no `sch_netem` (`tc netem`).

`with DelayProxy(("127.0.0.1", etcd_port)) as p:` listens on `p.address`; `p.delay = 2.5` holds
each chunk read from then on for 2.5 s in either direction (5 s round trip), `p.delay = 0` ends
that. Order within a direction is kept (a chunk never overtakes one read before it, so lowering
the delay lets queued chunks out first), and so is a half-close: an EOF travels behind the data
read before it, delayed like it. Connecting is not delayed (the proxy accepts at once and opens its
own connection upstream); the first request on a connection is.

One thread with a selector serves every connection. The proxy is bounded: it stops by itself
after `max_seconds` (closing every connection), and `close()` stops it at once; a direction stops
reading while more than QUEUE_LIMIT bytes wait in it.
"""

from __future__ import annotations

import selectors
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from types import TracebackType

QUEUE_LIMIT = 4 * 1024 * 1024
CHUNK = 64 * 1024
TICK = 0.05  # longest sleep of the loop (how soon it notices close() or the lifetime's end)


@dataclass
class _Flow:
    """One direction of a connection: what was read from `src` and waits to go to `dst`."""
    src: socket.socket
    dst: socket.socket
    chunks: deque[tuple[float, bytes | None]] = field(default_factory=deque)  # (due, data; None: EOF)
    queued: int = 0
    reading: bool = True  # src has not said EOF yet
    blocked: bool = False  # dst's buffer was full: wait until it is writable
    done: bool = False  # the EOF reached dst

    def due(self, now: float) -> bool:
        return bool(self.chunks) and self.chunks[0][0] <= now and not self.blocked


@dataclass
class _Conn:
    client: socket.socket
    upstream: socket.socket
    up: _Flow = field(init=False)
    down: _Flow = field(init=False)

    def __post_init__(self) -> None:
        self.up = _Flow(self.client, self.upstream)
        self.down = _Flow(self.upstream, self.client)

    def flows(self) -> tuple[_Flow, _Flow]:
        return self.up, self.down


@dataclass
class Stats:
    connections: int = 0  # accepted
    open: int = 0  # being served now
    bytes_up: int = 0  # client to upstream, delivered
    bytes_down: int = 0


class DelayProxy:
    def __init__(self, upstream: tuple[str, int], host: str = "127.0.0.1", port: int = 0,
                 max_seconds: float = 600.0) -> None:
        self.upstream = upstream
        self.max_seconds = max_seconds
        self.stats = Stats()
        self._delay = 0.0
        self._listener = socket.create_server((host, port))
        self._listener.setblocking(False)
        self.host, self.port = self._listener.getsockname()[:2]
        self._sel = selectors.DefaultSelector()
        self._conns: dict[socket.socket, _Conn] = {}
        self._stop = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="delay-proxy", daemon=True)

    @property
    def address(self) -> str:
        """host:port to give clients instead of the upstream's."""
        return f"{self.host}:{self.port}"

    @property
    def delay(self) -> float:
        """The one-way delay (seconds) given to each chunk when it is read."""
        return self._delay

    @delay.setter
    def delay(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"delay must not be negative, got {seconds:g}")
        self._delay = float(seconds)  # one float assignment: atomic for the loop thread

    def start(self) -> DelayProxy:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        if not self._thread.is_alive():  # never started, or finished: nothing else touches these
            self._close_all()

    def __enter__(self) -> DelayProxy:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- the loop ------------------------------------------------------------------------------
    def _run(self) -> None:
        end = time.monotonic() + self.max_seconds
        self._sel.register(self._listener, selectors.EVENT_READ)
        try:
            while not self._stop.is_set() and time.monotonic() < end:
                for key, mask in self._sel.select(self._timeout()):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    if sock is self._listener:
                        self._accept()
                        continue
                    conn = self._conns.get(sock)
                    if conn is None:
                        continue  # closed earlier in this round
                    for flow in conn.flows():
                        if mask & selectors.EVENT_READ and flow.src is sock:
                            self._read(flow)
                        if mask & selectors.EVENT_WRITE and flow.dst is sock:
                            flow.blocked = False
                for conn in self._each():
                    self._pump(conn)
        finally:
            self._close_all()

    def _each(self) -> list[_Conn]:
        """Every open connection once (`_conns` maps both of its sockets to it)."""
        return list({id(c): c for c in self._conns.values()}.values())

    def _timeout(self) -> float:
        now = time.monotonic()
        dues = [f.chunks[0][0] for c in self._each() for f in c.flows() if f.chunks and not f.blocked]
        return max(0.0, min([TICK, *(d - now for d in dues)]))

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        try:
            upstream = socket.create_connection(self.upstream, timeout=2.0)
        except OSError:
            client.close()  # upstream down: the client sees its connection closed
            return
        self.stats.connections += 1
        self.stats.open += 1
        for s in (client, upstream):
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = _Conn(client, upstream)
        self._conns[client] = self._conns[upstream] = conn
        self._sel.register(client, selectors.EVENT_READ)
        self._sel.register(upstream, selectors.EVENT_READ)

    def _read(self, flow: _Flow) -> None:
        try:
            data: bytes | None = flow.src.recv(CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # reset: pass it on as an end, behind what came before
            data = b""
        due = time.monotonic() + self._delay
        if data:
            flow.chunks.append((due, data))
            flow.queued += len(data)
        else:
            flow.chunks.append((due, None))
            flow.reading = False

    def _pump(self, conn: _Conn) -> None:
        """Deliver every chunk that is due, then update what the selector waits for."""
        now = time.monotonic()
        for flow in conn.flows():
            while flow.due(now):
                at, data = flow.chunks[0]
                if data is None:
                    try:
                        flow.dst.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    flow.chunks.popleft()
                    flow.done = True
                    break
                try:
                    n = flow.dst.send(data)
                except (BlockingIOError, InterruptedError):
                    n = 0
                except OSError:  # the receiver is gone: so is the connection
                    self._drop(conn)
                    return
                flow.queued -= n
                if flow is conn.up:
                    self.stats.bytes_up += n
                else:
                    self.stats.bytes_down += n
                if n < len(data):
                    flow.chunks[0] = (at, data[n:])
                    flow.blocked = True
                    break
                flow.chunks.popleft()
        if conn.up.done and conn.down.done:
            self._drop(conn)
            return
        for sock in (conn.client, conn.upstream):
            events = 0
            for flow in conn.flows():
                if flow.src is sock and flow.reading and flow.queued < QUEUE_LIMIT:
                    events |= selectors.EVENT_READ
                if flow.dst is sock and flow.blocked:
                    events |= selectors.EVENT_WRITE
            self._watch(sock, events)

    def _watch(self, sock: socket.socket, events: int) -> None:
        try:
            registered = self._sel.get_key(sock).events
        except KeyError:
            registered = 0
        if events == registered:
            return
        if not events:
            self._sel.unregister(sock)
        elif registered:
            self._sel.modify(sock, events)
        else:
            self._sel.register(sock, events)

    def _drop(self, conn: _Conn) -> None:
        if self._conns.pop(conn.client, None) is not None:
            self.stats.open -= 1
        self._conns.pop(conn.upstream, None)
        for sock in (conn.client, conn.upstream):
            self._watch(sock, 0)
            sock.close()

    def _close_all(self) -> None:
        if self._closed:
            return
        self._closed = True
        for conn in self._each():
            self._drop(conn)
        self._watch(self._listener, 0)
        self._listener.close()
        self._sel.close()
