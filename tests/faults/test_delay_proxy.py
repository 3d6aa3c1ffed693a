"""tests/support/delay_proxy.py on real loopback sockets, in front of a small echo server: bytes
pass both ways unchanged, the delay set at run time holds each direction, order and half-closes
survive a change of delay, and the proxy ends its connections when closed or when its lifetime
is up."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from tests.support.delay_proxy import DelayProxy
from tests.support.wait import wait_for

# A round trip without delay stays far below this even on a loaded 2-CPU CI machine; the delays
# the tests set are chosen so that a delayed round trip cannot be this fast.
FAST = 1.0


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        while data := sock.recv(65536):
            sock.sendall(data)
        sock.sendall(b"<eof>")  # after the client's EOF: what it sees once its half-close arrived


@pytest.fixture
def echo() -> Iterator[tuple[str, int]]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        host, port = server.server_address[:2]
        yield str(host), int(port)
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def proxy(echo: tuple[str, int]) -> Iterator[DelayProxy]:
    with DelayProxy(echo, max_seconds=60) as p:
        yield p


def connect(p: DelayProxy) -> socket.socket:
    s = socket.create_connection((p.host, p.port), timeout=10)
    s.settimeout(10)
    return s


def recv_exactly(s: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        got = s.recv(n - len(out))
        if not got:
            raise AssertionError(f"EOF after {out!r}")
        out += got
    return out


def round_trip(s: socket.socket, payload: bytes) -> float:
    start = time.monotonic()
    s.sendall(payload)
    assert recv_exactly(s, len(payload)) == payload
    return time.monotonic() - start


def test_bytes_pass_both_ways_unchanged_and_fast_without_delay(proxy: DelayProxy) -> None:
    with connect(proxy) as s:
        sent = 0
        for i in range(50):
            payload = f"chunk {i} ".encode() * 100
            assert round_trip(s, payload) < FAST
            sent += len(payload)
        big = bytes(range(256)) * 40_000  # 10 MB: more than QUEUE_LIMIT, so backpressure is used
        got = bytearray()
        sender = threading.Thread(target=s.sendall, args=(big,))
        sender.start()
        while len(got) < len(big):
            got += s.recv(1 << 20)
        sender.join(10)
        assert bytes(got) == big
        # Before closing: our EOF would make the echo server send "<eof>" back. The proxy counts
        # a chunk just after sending it, so the last count may trail our receipt for a moment.
        wait_for(lambda: proxy.stats.bytes_up == proxy.stats.bytes_down == sent + len(big), 5,
                 f"the proxy to count {sent + len(big)} bytes each way")
    assert proxy.stats.connections == 1


def test_the_delay_holds_each_direction_and_can_be_switched_off(proxy: DelayProxy) -> None:
    with connect(proxy) as s:
        assert round_trip(s, b"before") < FAST
        proxy.delay = 1.0
        took = round_trip(s, b"during")
        assert 2.0 <= took < 2.0 + 3 * FAST, f"round trip {took:.2f}s with 1s each way"
        proxy.delay = 0
        assert round_trip(s, b"after") < FAST


def test_lowering_the_delay_never_lets_a_chunk_overtake_an_earlier_one(proxy: DelayProxy) -> None:
    with connect(proxy) as s:
        proxy.delay = 0.5
        start = time.monotonic()
        s.sendall(b"first-")
        wait_for(lambda: proxy.stats.connections == 1 and _queued(proxy), 5, "the first chunk queued")
        proxy.delay = 0
        s.sendall(b"second")
        assert recv_exactly(s, 12) == b"first-second"
        assert time.monotonic() - start >= 0.5


def _queued(p: DelayProxy) -> bool:
    return any(f.chunks for c in p._each() for f in c.flows())


def test_a_half_close_travels_behind_the_data_with_the_delay(proxy: DelayProxy) -> None:
    with connect(proxy) as s:
        proxy.delay = 0.2
        start = time.monotonic()
        s.sendall(b"request")
        s.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := s.recv(100):
            got += chunk
        assert got == b"request<eof>"
        assert time.monotonic() - start >= 0.4
    wait_for(lambda: proxy.stats.open == 0, 5, "the proxy to drop the finished connection")


def test_closing_the_proxy_ends_its_connections(echo: tuple[str, int]) -> None:
    p = DelayProxy(echo).start()
    s = connect(p)
    try:
        assert round_trip(s, b"x") < FAST
        p.close()
        assert s.recv(10) == b""
        with pytest.raises(OSError):
            socket.create_connection((p.host, p.port), timeout=2).close()
    finally:
        s.close()
        p.close()


def test_the_proxy_stops_by_itself_after_its_lifetime(echo: tuple[str, int]) -> None:
    p = DelayProxy(echo, max_seconds=2.0).start()
    try:
        with connect(p) as s:
            assert round_trip(s, b"x") < FAST
            assert s.recv(10) == b"", "the connection outlived the proxy's lifetime"
        wait_for(lambda: not p._thread.is_alive(), 5, "the proxy's thread to end")
    finally:
        p.close()


def test_an_upstream_that_refuses_closes_the_client_at_once() -> None:
    with socket.create_server(("127.0.0.1", 0)) as tmp:
        dead = tmp.getsockname()[:2]  # closed at the end of the block: nobody listens there
    with DelayProxy((str(dead[0]), int(dead[1])), max_seconds=30) as p, connect(p) as s:
        assert s.recv(10) == b""
        assert p.stats.connections == 0


def test_a_negative_delay_is_refused(proxy: DelayProxy) -> None:
    with pytest.raises(ValueError, match="must not be negative"):
        proxy.delay = -1
