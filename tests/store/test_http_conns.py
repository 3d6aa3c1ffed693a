"""HostConnections (store/http_conns.py) against real local HTTP servers: one connection reused
across calls, a connection the server closed while idle replaced without a failed call, the
deadline bounding a server that never answers, a refused connection told apart, and a stream
(the etcd watch) read as it comes, idle past its bound, and ended by a shutdown."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pgwarden.store.http_conns import HostConnections, StreamIdle, _dropped
from tests.support.ports import free_port
from tests.support.wait import wait_for


class _Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        peer = f"{self.client_address[1]}".encode()
        out = body + b" via " + peer
        self.send_response(200)
        self.send_header("Content-Length", str(len(out)))
        if self.path == "/close":
            self.send_header("Connection", "close")
        self.end_headers()
        # /close says so; /drop hangs up after answering without saying it (an idle timeout)
        self.close_connection = self.path in ("/close", "/drop")
        self.wfile.write(out)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[ThreadingHTTPServer]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def _url(srv: ThreadingHTTPServer) -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}"


def test_calls_share_one_kept_connection(server: ThreadingHTTPServer) -> None:
    conns = HostConnections(_url(server))
    peers = set()
    for i in range(5):
        status, data = conns.post("/x", f"call {i}".encode(), {}, time.monotonic() + 2)
        assert status == 200 and data.startswith(f"call {i} via ".encode())
        peers.add(data.rsplit(b" ", 1)[1])
    assert len(peers) == 1, peers  # every call came from the same client port
    conns.close()


def test_a_connection_the_server_closed_is_replaced_without_a_failed_call(
        server: ThreadingHTTPServer) -> None:
    conns = HostConnections(_url(server))
    _, first = conns.post("/close", b"a", {}, time.monotonic() + 2)  # answered, then closed
    _, second = conns.post("/x", b"b", {}, time.monotonic() + 2)
    _, third = conns.post("/x", b"c", {}, time.monotonic() + 2)
    assert first.rsplit(b" ", 1)[1] != second.rsplit(b" ", 1)[1]
    assert second.rsplit(b" ", 1)[1] == third.rsplit(b" ", 1)[1]
    conns.close()


def test_a_kept_connection_the_server_dropped_while_idle_costs_no_failed_call(
        server: ThreadingHTTPServer) -> None:
    conns = HostConnections(_url(server))
    _, first = conns.post("/drop", b"a", {}, time.monotonic() + 2)  # kept by us, closed by it
    wait_for(lambda: _dropped(conns._idle[0]), 5, "the server to hang up the idle connection")
    _, second = conns.post("/x", b"b", {}, time.monotonic() + 2)
    assert first.rsplit(b" ", 1)[1] != second.rsplit(b" ", 1)[1]
    conns.close()


def test_a_server_that_never_answers_is_given_up_on_at_the_deadline() -> None:
    with socket.socket() as silent:  # accepts (the kernel's backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        conns = HostConnections(f"http://127.0.0.1:{silent.getsockname()[1]}")
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            conns.post("/x", b"a", {}, started + 0.3)
        assert time.monotonic() - started < 1.0


def test_a_refused_connection_says_so() -> None:
    conns = HostConnections(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ConnectionRefusedError):
        conns.post("/x", b"a", {}, time.monotonic() + 1)


def test_no_time_left_raises_before_sending(server: ThreadingHTTPServer) -> None:
    conns = HostConnections(_url(server))
    with pytest.raises(TimeoutError):
        conns.post("/x", b"a", {}, time.monotonic() - 0.1)


def test_not_an_http_url() -> None:
    with pytest.raises(ValueError, match="not an http"):
        HostConnections("ftp://127.0.0.1:1")


class _Streamer(BaseHTTPRequestHandler):
    """/stream: two messages as chunks (one split across two), then silence until the client
    hangs up; /plain: an ordinary answer."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/plain":
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")
            return
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for part in (b'{"a": 1}\n{"b"', b': 2}\n'):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.flush()
        self.close_connection = True
        self.rfile.read(1)  # until the client hangs up

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def streamer() -> Iterator[ThreadingHTTPServer]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Streamer)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def test_a_stream_yields_its_chunks_then_is_idle_past_the_bound(streamer: ThreadingHTTPServer) -> None:
    stream = HostConnections(_url(streamer)).open_stream("/stream", b"{}", {}, 1.0, 1.0)
    try:
        assert stream.status == 200
        got = b""
        started = time.monotonic()
        with pytest.raises(StreamIdle):
            for chunk in stream.chunks(0.3):
                got += chunk
        assert got == b'{"a": 1}\n{"b": 2}\n'
        assert 0.25 < time.monotonic() - started < 1.5
    finally:
        stream.close()


def test_shutdown_ends_a_blocked_read_at_once(streamer: ThreadingHTTPServer) -> None:
    stream = HostConnections(_url(streamer)).open_stream("/stream", b"{}", {}, 1.0, 1.0)
    chunks = stream.chunks(30.0)
    assert next(chunks) and next(chunks)  # the two chunks; the next read blocks
    ended = threading.Event()

    def read_on() -> None:
        try:
            for _ in chunks:
                pass
        except Exception:  # the shut-down socket: any error ends the read, as a short one does
            pass
        ended.set()

    threading.Thread(target=read_on, daemon=True).start()
    # Blocked or about to block: a shut-down socket ends the read either way.
    started = time.monotonic()
    stream.shutdown()
    assert ended.wait(5) and time.monotonic() - started < 1.0
    stream.close()


def test_an_answer_that_is_no_stream_says_so(streamer: ThreadingHTTPServer) -> None:
    stream = HostConnections(_url(streamer)).open_stream("/plain", b"{}", {}, 1.0, 1.0)
    try:
        with pytest.raises(http.client.HTTPException, match="not a stream"):
            next(stream.chunks(1.0))
    finally:
        stream.close()


def test_a_server_that_never_answers_a_stream_is_idle_within_the_bound() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        started = time.monotonic()
        with pytest.raises(StreamIdle):
            url = f"http://127.0.0.1:{silent.getsockname()[1]}"
            HostConnections(url).open_stream("/x", b"", {}, 1.0, 0.3)
        assert time.monotonic() - started < 1.5
