"""The REST API's connection cap and deadlines, over real sockets: trickling clients cannot hold
threads, an idle keep-alive connection ends, and health checks keep answering meanwhile."""

from __future__ import annotations

import selectors
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import urllib3

from pgwarden.api import transport
from pgwarden.api.limits import ConnectionSlots
from pgwarden.api.server import ApiServer
from pgwarden.tls.http import api_pool
from tests.support.ports import free_port
from tests.support.tls import make_pki
from tests.support.wait import wait_for

from .env import Env, make_env
from .factory import PRIMARY
from .https import start_https
from .raw import closed, connect, read_reply, request

CHECK = b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


def api_threads() -> int:
    return sum(t.name.startswith("pgwarden-api-") for t in threading.enumerate())


def capped_env(limit: int) -> Env:
    env = make_env()
    env.server.stop()
    server = ApiServer("127.0.0.1", free_port(), env.holder, env.store, env.commands, "node1",
                       store_timeout=2.0, max_connections=limit)
    server.start()
    env.server = server
    env.publish(PRIMARY)
    return env


@pytest.fixture
def capped() -> Iterator[Env]:
    e = capped_env(8)
    yield e
    e.server.stop()


def health_checks(port: int, n: int, deadline: float) -> list[int]:
    """`n` health checks in flight at once (non-blocking sockets, no threads); their statuses."""
    sel = selectors.DefaultSelector()
    replies: dict[socket.socket, bytearray] = {}
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(CHECK)
        s.setblocking(False)
        replies[s] = bytearray()
        sel.register(s, selectors.EVENT_READ, s)
    statuses: list[int] = []
    try:
        while replies and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=max(0.0, deadline - time.monotonic())):
                s = key.data
                try:
                    chunk = s.recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except ConnectionResetError:
                    chunk = b""
                if chunk:
                    replies[s] += chunk
                    continue
                sel.unregister(s)
                data = replies.pop(s)
                s.close()
                statuses.append(int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else 0)
    finally:
        for s in replies:
            s.close()
        sel.close()
    return statuses


class Tricklers:
    """Clients that send half a request head and then a byte now and then (a slow-loris)."""

    def __init__(self, port: int, n: int, every: float) -> None:
        self.socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(n)]
        for s in self.socks:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        self.every = every
        self.dropped = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        """A byte to each live socket every `every` seconds; a socket the server closed (EOF or
        reset, seen as soon as it happens) counts as dropped."""
        live = set(self.socks)
        with selectors.DefaultSelector() as sel:
            for s in live:
                sel.register(s, selectors.EVENT_READ, s)
            next_send = time.monotonic() + self.every
            while live and not self._stop.is_set():
                for key, _ in sel.select(timeout=max(0.0, min(next_send - time.monotonic(), 0.1))):
                    s = key.data
                    try:
                        gone = s.recv(1) == b""
                    except OSError:
                        gone = True
                    if gone:
                        sel.unregister(s)
                        live.discard(s)
                        self.dropped += 1
                if time.monotonic() >= next_send:
                    next_send += self.every
                    for s in list(live):
                        try:
                            s.sendall(b"a")
                        except OSError:
                            pass  # seen as gone by the read side

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for s in self.socks:
            s.close()


def test_health_checks_are_all_answered_while_tricklers_fill_the_api(capped: Env) -> None:
    port = int(capped.server.url.rsplit(":", 1)[1])
    tricklers = Tricklers(port, 30, every=0.3)  # far more than the 8 slots
    try:
        wait_for(lambda: capped.server.connections == 8, 10, "the API full of tricklers")
        peak = [0, 0]  # connections, threads
        watching = threading.Event()

        def watch() -> None:
            while not watching.is_set():
                peak[0] = max(peak[0], capped.server.connections)
                peak[1] = max(peak[1], api_threads())
                time.sleep(0.01)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        started = time.monotonic()
        statuses = health_checks(port, 300, started + 30)
        watching.set()
        watcher.join()
        assert statuses == [200] * 300, sorted(set(statuses))
        assert peak[0] <= 8  # never more connections than the cap ...
        assert peak[1] <= 8 + 2  # ... nor threads (one may still be exiting as its successor starts)
        assert time.monotonic() - started < 20
    finally:
        tricklers.close()


def test_a_trickler_is_dropped_by_its_deadline_even_when_the_api_is_not_full(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A byte every 0.4 s never trips a per-read timeout; the head's deadline (1 s here) ends it."""
    monkeypatch.setattr(transport, "_REQUEST_TIMEOUT", 1.0)
    env = make_env()
    try:
        port = int(env.server.url.rsplit(":", 1)[1])
        started = time.monotonic()
        tricklers = Tricklers(port, 3, every=0.4)
        try:
            wait_for(lambda: tricklers.dropped == 3, 10, "the tricklers dropped")
            assert 0.9 < time.monotonic() - started < 5
        finally:
            tricklers.close()
    finally:
        env.server.stop()


def test_an_idle_keepalive_connection_ends_after_the_idle_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transport, "_IDLE_TIMEOUT", 0.5)  # the head's own deadline stays 10 s
    env = make_env()
    try:
        with connect(env) as s, s.makefile("rb") as f:
            s.sendall(request("GET", "/health"))
            assert read_reply(f).status == 200
            started = time.monotonic()
            assert closed(s, f)
            assert 0.4 < time.monotonic() - started < 3
        with connect(env) as s, s.makefile("rb") as f:  # a connection that never sends anything
            started = time.monotonic()
            assert closed(s, f)
            assert time.monotonic() - started < 3
    finally:
        env.server.stop()


def test_at_the_cap_idle_connections_give_way_and_nobody_gets_a_503(capped: Env) -> None:
    idle = [connect(capped) for _ in range(8)]
    try:
        wait_for(lambda: capped.server.connections == 8, 10, "every slot taken by an idle connection")
        started = time.monotonic()
        port = int(capped.server.url.rsplit(":", 1)[1])
        assert health_checks(port, 20, started + 10) == [200] * 20
        assert time.monotonic() - started < 4  # shed after 1 s of waiting, not after 5 s idle
    finally:
        for s in idle:
            s.close()


def test_a_request_in_progress_is_never_shed() -> None:
    slots = ConnectionSlots(2)
    a, b = socket.socketpair()
    try:
        busy = slots.take(a)
        busy.busy()
        waiting = slots.take(b)
        assert slots.shed(time.monotonic() + 5) == 0  # its thread has not run yet: not shed
        waiting.waiting()
        assert not slots.wait_free(0)
        assert slots.shed(time.monotonic() + 0.5) == 0  # nobody has waited long enough
        assert slots.shed(time.monotonic() + 5) == 1  # only the one waiting for a request
        slots.release(waiting)
        assert slots.wait_free(0) and len(slots) == 1
    finally:
        a.close()
        b.close()


def test_with_the_defaults_a_byte_every_4_s_is_dropped_10_s_after_the_request_began(capped: Env) -> None:
    """The issue's case with the shipped deadlines: each byte arrives well within any per-read
    timeout, and the head's 10 s deadline still ends the connection."""
    port = int(capped.server.url.rsplit(":", 1)[1])
    started = time.monotonic()
    tricklers = Tricklers(port, 1, every=4.0)
    try:
        wait_for(lambda: tricklers.dropped == 1, 20, "the trickler dropped")
        assert 9.5 < time.monotonic() - started < 14
    finally:
        tricklers.close()


def test_over_https_clients_stalling_their_handshake_give_way_at_the_cap(tmp_path: Path) -> None:
    """A TLS handshake counts as waiting for a request: silent clients filling an HTTPS API's
    slots are shed, and a health check (handshake and all) is answered."""
    pki = make_pki(tmp_path)
    server = start_https(pki.server(), max_connections=4)
    port = int(server.url.rsplit(":", 1)[1])
    silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(4)]
    try:
        wait_for(lambda: server.connections == 4, 10, "every slot taken by a silent client")
        http = api_pool(pki.client(), retries=False, timeout=urllib3.Timeout(total=8))
        started = time.monotonic()
        assert http.request("GET", server.url + "/health").status == 200
        assert time.monotonic() - started < 4
    finally:
        for s in silent:
            s.close()
        server.stop()
