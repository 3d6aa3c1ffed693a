"""The REST API's HTTP/1.1 framing over raw sockets: keep-alive and pipelining, chunked bodies,
requests that arrive in pieces, the body cap, malformed framing, Expect: 100-continue, HTTP/1.0,
the access log, shutdown and IPv6. urllib3 (test_server.py) only ever sends well-formed requests;
these are what a hostile or odd client sends."""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from pgwarden.api import transport
from pgwarden.api.server import ApiServer
from pgwarden.api.state import StateHolder
from tests.support.ports import free_port
from tests.support.wait import wait_for

from .env import Env, Errors, env_watching_errors, make_env
from .raw import AUTH_LINE, authed, chunked, closed, connect, read_reply, request

MAX_BODY = 1024 * 1024
SWITCHOVER = b'{"leader": "node1", "candidate": "node2"}'
@pytest.fixture
def env() -> Iterator[Env]:
    e = make_env()
    yield e
    e.server.stop()


# -- keep-alive and pipelining ---------------------------------------------------------------------


def test_pipelined_requests_are_answered_in_order(env: Env) -> None:
    with connect(env) as s, s.makefile("rb") as f:
        s.sendall(request("GET", "/health") + request("HEAD", "/status") + request("GET", "/status")
                  + request("OPTIONS", "/replica") + request("GET", "/nope"))
        first = read_reply(f)
        assert first.status == 200 and first.json()["name"] == "node1"  # type: ignore[index]
        head = read_reply(f, head=True)
        full = read_reply(f)
        assert head.status == full.status == 200
        assert head.headers["content-length"] == full.headers["content-length"] == str(len(full.body))
        assert read_reply(f).status == 503  # OPTIONS: status only, Content-Length: 0
        assert read_reply(f).status == 404
        # still open: one more request on the same connection
        s.sendall(request("GET", "/primary"))
        assert read_reply(f).status == 200


def test_an_unread_body_is_skipped_so_the_next_request_is_in_sync(env: Env) -> None:
    with connect(env) as s, s.makefile("rb") as f:
        s.sendall(request("POST", "/health", b"GET /nope HTTP/1.1\r\n\r\n")
                  + request("PUT", "/status", headers={"Transfer-Encoding": "chunked"})
                  + chunked(b"GET /nope ", b"HTTP/1.1\r\n\r\n")
                  + request("GET", "/primary"))
        wrong = read_reply(f)
        assert wrong.status == 405 and wrong.headers["allow"] == "GET,HEAD,OPTIONS"
        assert "method POST is not allowed on /health" in wrong.json()["error"]  # type: ignore[index]
        assert read_reply(f).status == 405
        assert read_reply(f).status == 200


def test_http10_gets_its_answer_and_the_connection_closes(env: Env) -> None:
    with connect(env) as s, s.makefile("rb") as f:
        s.sendall(b"OPTIONS /primary HTTP/1.0\r\n\r\n")  # what HAProxy's `option httpchk` sends
        r = read_reply(f)
        assert r.status == 200 and r.body == b""
        assert closed(s, f)


def test_connection_close_is_honoured(env: Env) -> None:
    with connect(env) as s, s.makefile("rb") as f:
        s.sendall(request("GET", "/health", headers={"Connection": "close"}))
        r = read_reply(f)
        assert r.status == 200 and r.headers["connection"] == "close"
        assert closed(s, f)


# -- bodies ---------------------------------------------------------------------------------------


def test_chunked_body(env: Env) -> None:
    with connect(env) as s, s.makefile("rb") as f:
        s.sendall(request("POST", "/switchover", headers={"Transfer-Encoding": "chunked"})
                  + chunked(SWITCHOVER[:10], SWITCHOVER[10:11], SWITCHOVER[11:],
                            trailer=b"X-Trailer: ignored\r\n"))
        r = read_reply(f)
        assert r.status == 202, r.body
        req = env.store.snapshot(1).failover
        assert req is not None and req.candidate == "node2"
        s.sendall(request("GET", "/health"))  # the connection is still in step
        assert read_reply(f).status == 200


def test_chunk_extensions_are_ignored(env: Env) -> None:
    with connect(env) as s, s.makefile("rb") as f:
        body = b"%x;name=value\r\n%s\r\n0\r\n\r\n" % (len(SWITCHOVER), SWITCHOVER)
        s.sendall(request("POST", "/switchover", headers={"Transfer-Encoding": "chunked"}) + body)
        assert read_reply(f).status == 202


def test_a_request_split_into_many_small_sends(env: Env) -> None:
    data = request("POST", "/switchover", SWITCHOVER, {"User-Agent": "dribble"})
    with connect(env) as s, s.makefile("rb") as f:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(0, len(data), 3):
            s.sendall(data[i:i + 3])
        assert read_reply(f).status == 202
    assert env.store.snapshot(1).failover is not None


def test_a_body_at_the_cap_is_accepted(env: Env) -> None:
    body = SWITCHOVER + b" " * (MAX_BODY - len(SWITCHOVER))
    with connect(env) as s, s.makefile("rb") as f:
        s.sendall(request("POST", "/switchover", body))
        assert read_reply(f).status == 202


def test_an_announced_oversized_body_is_413_and_the_connection_closes(env: Env) -> None:
    with connect(env) as s, s.makefile("rb") as f:
        s.sendall(request("POST", "/switchover", headers={"Content-Length": str(MAX_BODY + 1)}))
        r = read_reply(f)  # answered without waiting for the body
        assert r.status == 413 and "error" in r.json()  # type: ignore[operator]
        assert r.headers["connection"] == "close"
        assert closed(s, f)


def test_an_oversized_chunked_body_is_413_and_the_connection_closes(env: Env) -> None:
    with connect(env) as s, s.makefile("rb") as f:
        def send() -> None:
            try:
                s.sendall(request("POST", "/switchover", headers={"Transfer-Encoding": "chunked"})
                          + chunked(*[b"x" * 65536] * 17))
            except OSError:
                pass  # the server may stop reading once it has answered

        sender = threading.Thread(target=send)
        sender.start()
        r = read_reply(f)
        sender.join(10)
        assert r.status == 413
        assert closed(s, f)


def test_an_oversized_body_nobody_reads_closes_the_connection(env: Env) -> None:
    with connect(env) as s, s.makefile("rb") as f:
        s.sendall(request("GET", "/health", headers={"Content-Length": str(MAX_BODY + 1)}))
        r = read_reply(f)
        assert r.status == 200 and r.headers["connection"] == "close"
        assert closed(s, f)


def test_expect_100_continue(env: Env) -> None:
    with connect(env) as s, s.makefile("rb") as f:
        s.sendall(request("POST", "/switchover", headers={"Content-Length": str(len(SWITCHOVER)),
                                                           "Expect": "100-continue"}))
        assert f.readline().startswith(b"HTTP/1.1 100 ")
        while f.readline() not in (b"\r\n", b""):
            pass
        s.sendall(SWITCHOVER)
        assert read_reply(f).status == 202


# -- malformed framing ----------------------------------------------------------------------------


MALFORMED = [
    pytest.param(b"HELLO\r\n\r\n", 400, id="garbage-request-line"),
    pytest.param(b"GET /health\r\n\r\n", 400, id="http-0.9"),
    pytest.param(b"GET * HTTP/1.1\r\nHost: x\r\n\r\n", 400, id="asterisk-target"),
    pytest.param(b"GET example.com:80 HTTP/1.1\r\nHost: x\r\n\r\n", 400, id="authority-target"),
    pytest.param(b"CONNECT example.com:443 HTTP/1.1\r\nHost: x\r\n\r\n", 400, id="connect"),
    pytest.param(b"G(T /health HTTP/1.1\r\nHost: x\r\n\r\n", 400, id="method-not-a-token"),
    pytest.param(b"GET /h\x7fealth HTTP/1.1\r\nHost: x\r\n\r\n", 400, id="control-in-target"),
    pytest.param(b"GET /health HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n", 400, id="header-no-colon"),
    pytest.param(b"GET /health HTTP/1.1\r\nHost: x\r\nBad Name: y\r\n\r\n", 400, id="header-name-space"),
    pytest.param(b"GET /health HTTP/1.1\r\n\r\n", 400, id="http11-without-host"),
    pytest.param(b"GET /health HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400, id="two-hosts"),
    pytest.param(b"POST /switchover HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, id="length-and-chunked"),
    pytest.param(b"POST /switchover HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400,
                 id="length-not-a-number"),
    pytest.param(b"POST /switchover HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400,
                 id="length-negative"),
    pytest.param(b"POST /switchover HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
                 400, id="conflicting-lengths"),
    pytest.param(b"POST /switchover HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400,
                 id="chunk-size-not-hex"),
    # the chunk's data must end with CRLF, not any two bytes (CVE-2025-43859, h11 < 0.16)
    pytest.param(b"POST /switchover HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"2\r\n{}XX0\r\n\r\n", 400, id="chunk-without-crlf"),
    pytest.param(b"POST /switchover HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501,
                 id="unsupported-transfer-coding"),
    pytest.param(b"POST /switchover HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 501, id="two-transfer-encodings"),
    pytest.param(b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", 414, id="request-line-too-long"),
    pytest.param(b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-Big: " + b"a" * 70000 + b"\r\n\r\n", 431,
                 id="header-too-long"),
    pytest.param(b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(101))
                 + b"\r\n", 431, id="too-many-headers"),
]


@pytest.mark.parametrize(("raw", "status"), MALFORMED)
def test_malformed_requests_get_an_error_and_the_connection_closes(env: Env, raw: bytes, status: int) -> None:
    with connect(env) as s, s.makefile("rb") as f:
        # With credentials, so that a POST reaches its route and reads its body.
        s.sendall(authed(raw) + request("GET", "/health"))  # a request behind it is never served
        r = read_reply(f)
        assert r.status == status
        assert isinstance(r.json(), dict) and "error" in r.json()  # type: ignore[operator]
        assert closed(s, f)
    assert env.request("GET", "/health").status == 200


def test_an_error_answer_to_head_has_no_body(env: Env) -> None:
    with connect(env) as s, s.makefile("rb") as f:
        s.sendall(b"HEAD * HTTP/1.1\r\nHost: x\r\n\r\n")
        r = read_reply(f, head=True)
        assert r.status == 400 and int(r.headers["content-length"]) > 0
        assert closed(s, f)  # nothing but the head was sent


def test_an_upgrade_request_is_answered_as_plain_http(env: Env) -> None:
    with connect(env) as s, s.makefile("rb") as f:
        s.sendall(request("GET", "/health", headers={"Connection": "Upgrade", "Upgrade": "websocket"})
                  + request("GET", "/primary"))
        assert read_reply(f).status == 200
        assert read_reply(f).status == 200


# -- timeouts ---------------------------------------------------------------------------------------


@pytest.fixture
def quick_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    """The server with a 0.5 s deadline for a request's head and for its body."""
    monkeypatch.setattr(transport, "_REQUEST_TIMEOUT", 0.5)
    e = make_env()
    yield e
    e.server.stop()


def test_a_half_request_then_silence_is_dropped_while_others_are_served(quick_env: Env) -> None:
    with connect(quick_env) as s, s.makefile("rb") as f:
        started = time.monotonic()
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nUser-Ag")
        for _ in range(3):  # another client is served meanwhile
            assert quick_env.request("GET", "/health").status == 200
        assert closed(s, f)  # without an answer
        assert 0.4 < time.monotonic() - started < 5


def test_a_body_that_never_comes_is_dropped(quick_env: Env) -> None:
    with connect(quick_env) as s, s.makefile("rb") as f:
        s.sendall(request("POST", "/switchover", headers={"Content-Length": "100"}) + b'{"leader"')
        assert closed(s, f)
    assert quick_env.store.snapshot(1).failover is None


def test_an_idle_keepalive_connection_is_closed(quick_env: Env) -> None:
    with connect(quick_env) as s, s.makefile("rb") as f:
        s.sendall(request("GET", "/health"))
        assert read_reply(f).status == 200
        started = time.monotonic()
        assert closed(s, f)
        assert time.monotonic() - started < 5


def test_a_dribbling_client_cannot_hold_a_connection(quick_env: Env) -> None:
    """A byte every 50 ms never trips a per-read timeout; the request's deadline still ends it."""
    with connect(quick_env) as s:
        started = time.monotonic()
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        s.settimeout(0.05)
        while time.monotonic() - started < 5:
            try:
                s.sendall(b"a")
                if s.recv(1) == b"":
                    break
            except TimeoutError:
                continue
            except OSError:  # reset
                break
        else:
            pytest.fail("the server still reads a request that started 5 s ago")
        assert time.monotonic() - started < 3


# -- structured fuzzing -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_env() -> Iterator[tuple[Env, Errors]]:
    yield from env_watching_errors("pgwarden.api")


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    """Requests made of plausible and broken parts: the framing choices a smuggler plays with."""
    eol = draw(st.sampled_from([b"\r\n", b"\r\n", b"\n"]))
    method = draw(st.sampled_from([b"GET", b"HEAD", b"POST", b"PATCH", b"OPTIONS", b"CONNECT", b"get",
                                   b"G T"]))
    target = draw(st.sampled_from([b"/health", b"/status", b"/switchover", b"/config", b"*",
                                   b"http://x/primary?lag=1MB", b"//", b"/%ff%2f", b"/a b", b""]))
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1x", b""]))
    body = draw(st.sampled_from([b"", SWITCHOVER, b"{", b"x" * 300]))
    headers = []
    if draw(st.booleans()):
        headers.append(b"Host: x")
    if draw(st.booleans()):
        headers.append(AUTH_LINE)
    framing = draw(st.sampled_from(["none", "length", "length", "chunked", "both", "bad-length",
                                    "short-length", "gzip", "bad-chunk"]))
    if framing in ("length", "both"):
        headers.append(b"Content-Length: %d" % len(body))
    if framing == "bad-length":
        headers.append(draw(st.sampled_from([b"Content-Length: +3", b"Content-Length: 1,2",
                                             b"Content-Length: 99999999999999999999999"])))
    if framing == "short-length":
        headers.append(b"Content-Length: %d" % (len(body) // 2))
    if framing in ("chunked", "both", "bad-chunk"):
        headers.append(draw(st.sampled_from([b"Transfer-Encoding: chunked", b"Transfer-Encoding: CHUNKED",
                                             b"Transfer-Encoding:  chunked "])))
    if framing == "gzip":
        headers.append(b"Transfer-Encoding: gzip, chunked")
    headers += draw(st.lists(st.sampled_from([b"Connection: close", b"Connection: keep-alive",
                                              b"Expect: 100-continue", b"X: \x00", b" folded",
                                              b"Upgrade: h2c", b"Content-Length: 0",
                                              b"Transfer-Encoding: chunked"]),
                             max_size=2))
    payload = body
    if framing in ("chunked", "both"):
        payload = chunked(body[:5], body[5:]) if body else chunked()
    elif framing == "bad-chunk":
        payload = draw(st.sampled_from([b"5\r\nabcdeXX0\r\n\r\n", b"-1\r\n", b"5\r\nab",
                                        b"ffffffffffffffffff\r\n", b"0\r\nTrailer: x\r\n"]))
    line = b" ".join(p for p in (method, target, version) if p)
    return eol.join([line, *headers]) + eol + eol + payload


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(msgs=st.lists(messages(), min_size=1, max_size=3), cuts=st.lists(st.integers(1, 400), max_size=4))
def test_fuzz_framing(fuzz_env: tuple[Env, Errors], msgs: list[bytes], cuts: list[int]) -> None:
    env, errors = fuzz_env
    errors.records.clear()
    data = b"".join(msgs)
    with connect(env, timeout=5) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            for cut in sorted(cuts):  # in pieces, as a slow or sneaky client sends it
                s.sendall(data[:cut])
                data = data[cut:]
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server answered an error and closed
        reply = b""
        try:
            while chunk := s.recv(65536):
                reply += chunk
        except ConnectionResetError:
            pass
    assert reply == b"" or reply.startswith(b"HTTP/1.1 "), reply[:200]
    statuses = [int(m) for m in re.findall(rb"(?:^|\r\n)HTTP/1\.1 (\d{3}) ", reply)]
    assert all(code < 500 or code in (501, 503) for code in statuses), (msgs, reply[:500])
    event(" ".join(map(str, statuses)) or "no reply")
    assert not errors.records, [r.getMessage() for r in errors.records]
    assert env.request("GET", "/health").status == 200


# -- access log, shutdown, IPv6 -------------------------------------------------------------------


def test_access_log_line(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pgwarden.api.access")
    with connect(env) as s, s.makefile("rb") as f:
        s.sendall(request("GET", "/status?x=1", headers={"User-Agent": "probe/1", "Referer": "here"}))
        r = read_reply(f)

    def lines() -> list[str]:
        return [rec.getMessage() for rec in caplog.records if rec.name == "pgwarden.api.access"]

    wait_for(lines, 5, "the access log line")  # written just after the answer is sent
    assert len(lines()) == 1
    assert lines()[0].startswith("127.0.0.1 [")
    assert f'"GET /status?x=1 HTTP/1.1" 200 {len(r.body)} "here" "probe/1"' in lines()[0]


def test_access_log_line_for_an_unparsable_request(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pgwarden.api.access")
    with connect(env) as s, s.makefile("rb") as f:
        s.sendall(b"\x01HELLO \x1b[2J\r\nmore\r\n\r\n")
        assert read_reply(f).status == 400

    def lines() -> list[str]:
        return [rec.getMessage() for rec in caplog.records if rec.name == "pgwarden.api.access"]

    wait_for(lines, 5, "the access log line")
    assert '"\\x01HELLO \\x1b[2J" 400 ' in lines()[0]  # control characters escaped


def test_stop_ends_idle_keepalive_connections(env: Env) -> None:
    with connect(env) as s, s.makefile("rb") as f:
        s.sendall(request("GET", "/health"))
        assert read_reply(f).status == 200
        env.server.stop()
        assert closed(s, f)


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6(), reason="no IPv6 loopback")
def test_ipv6_listener() -> None:
    server = ApiServer("::1", free_port(), StateHolder(), None, None, "node1")
    server.start()
    try:
        assert server.url.startswith("http://[::1]:")
        port = int(server.url.rsplit(":", 1)[1])
        with socket.create_connection(("::1", port), timeout=10) as s, s.makefile("rb") as f:
            s.sendall(request("GET", "/health"))
            assert read_reply(f).status == 503  # no state published yet, but served
    finally:
        server.stop()
