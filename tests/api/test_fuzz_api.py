"""The REST API under hypothesis, over real sockets to a real ApiServer: random methods, paths,
query strings, headers and bodies (JSON of every shape for the real routes, and junk), truncated
and oversized requests. Never a 5xx (a health path's 503 is its answer, not a failure), never an
error logged, never a hang (every request has a client deadline), and the server keeps answering.

The framing itself (Content-Length vs chunked, smuggling) is fuzzed in test_transport.py; this is
the routes' side. PGWARDEN_FUZZ_EXAMPLES raises the number of examples (default 300)."""

from __future__ import annotations

import json
import os
import re
import socket
import time
import urllib.parse
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from pgwarden.api.health import HEALTH_PATHS

from .env import AUTH, Env, Errors, env_watching_errors

EXAMPLES = int(os.environ.get("PGWARDEN_FUZZ_EXAMPLES", "300"))
DEADLINE = 5.0  # the client's, per request: past it the server hangs, which fails the test
MAX_BODY = 1024 * 1024

# Each route with the methods it serves, so that most examples get past routing.
SERVED = [("/status", "GET"), ("/patroni", "HEAD"), ("/position", "GET"), ("/cluster", "GET"),
          ("/history", "GET"), ("/config", "GET"), ("/config", "PATCH"), ("/config", "PATCH"),
          ("/config", "PUT"),
          ("/switchover", "POST"), ("/switchover", "POST"), ("/switchover", "DELETE"), ("/failover", "POST"),
          ("/restart", "POST"), ("/reinitialize", "POST"),
          *((p, m) for p in sorted(HEALTH_PATHS) for m in ("GET", "HEAD", "OPTIONS"))]
ROUTES = sorted({p for p, _ in SERVED})
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT", "PROPFIND", "get"]
FIELDS = ["leader", "candidate", "member", "scheduled_at", "role", "restart_pending", "force", "schedule",
          "ttl", "loop_wait", "retry_timeout", "synchronous_mode", "synchronous_node_count", "paused",
          "maximum_lag_on_failover", "failover_mode", "parameters", "postgresql", "use_pg_rewind"]
NAMES = ["node1", "node2", "node3", "nobody", ""]


@pytest.fixture(scope="module")
def fuzz_env() -> Iterator[tuple[Env, Errors]]:
    yield from env_watching_errors("pgwarden")


json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                         st.floats(allow_nan=False), st.text(max_size=12), st.sampled_from(NAMES),
                         st.sampled_from(["now", "2030-01-01T00:00:00+00:00", "soon", "on", "off", "quorum",
                                          "8MB", "lots", "-1", "1e400"]))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)), max_leaves=8)
route_bodies = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=4).map(json.dumps)
parameter_bodies = st.dictionaries(
    st.sampled_from(["max_connections", "work_mem", "shared_buffers", "wal_level", "hot_standby", "my.x",
                     "archive_command", "statement_timeout", "nope"]),
    json_scalars, min_size=1, max_size=3).map(lambda p: json.dumps({"parameters": p}))
bodies = st.one_of(st.just(""), route_bodies, parameter_bodies, json_values.map(json.dumps),
                   st.text(max_size=50), st.sampled_from(["{", "[]", "null", '{"a":', "\ufeff{}", "{}" * 3]))

token = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.~!$&'*+^`|",
                min_size=1, max_size=12)
segment = st.one_of(st.sampled_from(["", "..", ".", "%2F", "%00", "%ff", "%", "a%20b", "~", "status"]),
                    st.text(alphabet="abcxyz0123456789-_.", max_size=10))


@st.composite
def paths(draw: st.DrawFn) -> str:
    if draw(st.integers(0, 3)):
        path = draw(st.sampled_from(ROUTES)) + draw(st.sampled_from(["", "", "/", "//", "/x"]))
    else:
        path = "/" + "/".join(draw(st.lists(segment, max_size=4)))
    if draw(st.booleans()):
        query = draw(st.lists(st.tuples(st.sampled_from(["lag", "replication_state", "x", "", "lag"]),
                                        st.one_of(st.sampled_from(["1MB", "16kB", "-1", "abc", "", "1e99",
                                                                   "streaming", "%zz"]),
                                                  st.text(max_size=8))), max_size=3))
        path += "?" + "&".join(f"{urllib.parse.quote(k)}={urllib.parse.quote(v)}" for k, v in query)
    return path


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, str, str, bool]:
    """(raw request, method, path, truncated)."""
    if draw(st.integers(0, 2)):  # a route and a method it serves, with a random query
        path, method = draw(st.sampled_from(SERVED))
        _, mark, query = draw(paths()).partition("?")
        path += mark + query
    else:
        method = draw(st.one_of(st.sampled_from(METHODS), token))
        path = draw(paths())
    body = draw(bodies).encode("utf-8")
    headers = [b"Host: x"]
    auth = draw(st.sampled_from(["good", "good", "good", "good", "none", "bad", "garbage", "twice"]))
    if auth in ("good", "twice"):
        headers.append(f"Authorization: {AUTH['Authorization']}".encode())
    if auth == "twice":
        headers.append(b"Authorization: Basic Og==")
    if auth == "bad":
        headers.append(b"Authorization: Basic YWRtaW46d3Jvbmc=")
    if auth == "garbage":
        headers.append(draw(st.sampled_from([b"Authorization: Basic ###", b"Authorization: Bearer x",
                                             b"Authorization: Basic", b"Authorization: basic \xff\xfe"])))
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.one_of(token, st.sampled_from(["Content-Type", "Accept", "Expect", "Connection",
                                                      "X-Forwarded-For", "Cookie"])))
        printable = st.characters(min_codepoint=32, max_codepoint=126)
        value = draw(st.one_of(st.text(alphabet=printable, max_size=40),
                               st.sampled_from(["application/json", "100-continue", "close", "keep-alive"])))
        headers.append(f"{name}: {value}".encode())
    size = draw(st.sampled_from(["exact"] * 8 + ["none", "huge", "over"]))
    if size == "exact":
        headers.append(b"Content-Length: %d" % len(body))
    elif size == "huge":
        headers.append(b"Content-Length: %d" % (MAX_BODY + 1 + draw(st.integers(0, 10**9))))
    elif size == "over":
        body = b'{"x": "' + b"a" * (MAX_BODY + 10) + b'"}'
        headers.append(b"Content-Length: %d" % len(body))
    if size == "none":
        body = b""
    raw = f"{method} {path} HTTP/1.1\r\n".encode() + b"\r\n".join(headers) + b"\r\n\r\n" + body
    truncated = draw(st.integers(0, 9)) == 0
    if truncated:
        raw = raw[:draw(st.integers(0, len(raw)))]
    return raw, method, path, truncated


def exchange(env: Env, raw: bytes) -> bytes:
    """Send `raw`, end our side, read to EOF; the whole exchange within DEADLINE."""
    port = int(env.server.url.rsplit(":", 1)[1])
    deadline = time.monotonic() + DEADLINE
    reply = b""
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as s:
        try:
            s.sendall(raw)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server answered (413, 400) and closed while we were still sending
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no end to the answer within {DEADLINE}s: {raw[:200]!r}"
            s.settimeout(remaining)
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            except TimeoutError:
                raise AssertionError(f"the server hung: {raw[:200]!r}") from None
            if not chunk:
                break
            reply += chunk
    return reply


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                         HealthCheck.too_slow])
@given(case=requests())
def test_fuzz_the_api(fuzz_env: tuple[Env, Errors], case: tuple[bytes, str, str, bool]) -> None:
    env, errors = fuzz_env
    errors.records.clear()
    raw, method, path, truncated = case
    reply = exchange(env, raw)
    assert reply == b"" or reply.startswith(b"HTTP/1.1 "), reply[:200]
    statuses = [int(m) for m in re.findall(rb"(?:^|\r\n)HTTP/1\.1 (\d{3}) ", reply)]
    if not truncated:
        assert statuses, f"no answer to a whole request: {raw[:300]!r}"
    plain = urllib.parse.unquote(path.split("?")[0])
    health = method in ("GET", "HEAD", "OPTIONS") and (plain.rstrip("/") or "/") in HEALTH_PATHS
    for status in statuses:
        # 503 is a health path's "no" (a replica asked /primary); 501: an unknown transfer coding.
        assert status < 500 or (status == 503 and health) or status == 501, (raw[:500], reply[:500])
    event(" ".join(map(str, statuses)) or "closed without an answer")
    assert not errors.records, [r.getMessage() for r in errors.records]
    assert env.request("GET", "/health").status == 200  # still serving
