"""REST API authentication over real loopback HTTP: without the right credentials nothing that
changes the cluster or reveals its settings is done (401, the store untouched), while health checks,
/status, /position and /history answer anyone."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator, Mapping

import pytest

from pgwarden.api.auth import OPEN_PATHS, BasicAuth, basic_header, is_open
from pgwarden.api.health import HEALTH_PATHS, health_status
from pgwarden.config.schema import ClusterSettings

from .env import AUTH, PASSWORD, USER, Env, make_env
from .factory import CAUGHT_UP

CHALLENGE = 'Basic realm="pgwarden"'
WRITES = [
    ("POST", "/switchover", {"leader": "node1", "candidate": "node2"}),
    ("POST", "/failover", {"candidate": "node2"}),
    ("POST", "/restart", {}),
    ("POST", "/reinitialize", {"force": True}),
    ("PATCH", "/config", {"ttl": 10}),
    ("PUT", "/config", {"ttl": 10}),
    ("DELETE", "/switchover", None),
]


def header(raw: bytes) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


WRONG = {
    "wrong password": {"Authorization": basic_header(USER, PASSWORD + "x")},
    "wrong user": {"Authorization": basic_header("root", PASSWORD)},
    "password as user": {"Authorization": basic_header(PASSWORD, USER)},
    "empty password": {"Authorization": basic_header(USER, "")},
    "no colon": header(USER.encode()),
    "latin-1 instead of UTF-8": header(f"{USER}:{PASSWORD}".encode("latin-1")),
    "not base64": {"Authorization": "Basic %%%"},
    "another scheme": {"Authorization": "Bearer " + AUTH["Authorization"].split()[1]},
    "credentials twice": {"Authorization": f"{AUTH['Authorization']}, {AUTH['Authorization']}"},
    "empty": {"Authorization": ""},
}


@pytest.fixture
def env() -> Iterator[Env]:
    e = make_env()
    # A scheduled switchover, so that an anonymous DELETE would have something to delete.
    status, _ = e.json("POST", "/switchover", {"leader": "node1", "scheduled_at": "2099-01-01T00:00:00Z"})
    assert status == 202
    yield e
    e.server.stop()


def assert_refused(env: Env, method: str, path: str, body: object, auth: Mapping[str, str] | None) -> None:
    before = env.store.snapshot(1)
    r = env.request(method, path, body, auth=auth)
    assert r.status == 401, (method, path, r.status, r.data)
    assert r.headers["WWW-Authenticate"] == CHALLENGE
    assert "credentials" in json.loads(r.data)["error"]
    after = env.store.snapshot(1)
    assert (after.failover, after.settings, after.leader) == (before.failover, before.settings, before.leader)
    assert env.commands.calls == []


@pytest.mark.parametrize(("method", "path", "body"), WRITES, ids=[f"{m} {p}" for m, p, _ in WRITES])
def test_anonymous_writes_are_refused_and_change_nothing(env: Env, method: str, path: str,
                                                         body: object) -> None:
    assert_refused(env, method, path, body, None)


@pytest.mark.parametrize("auth", WRONG.values(), ids=list(WRONG))
def test_wrong_credentials_are_refused(env: Env, auth: dict[str, str]) -> None:
    for method, path, body in WRITES:
        assert_refused(env, method, path, body, auth)
    assert_refused(env, "GET", "/config", None, auth)


def test_reading_the_settings_needs_credentials(env: Env) -> None:
    for path in ("/config", "/cluster"):
        r = env.request("GET", path, auth=None)
        assert r.status == 401 and r.headers["WWW-Authenticate"] == CHALLENGE
        assert "settings" not in json.loads(r.data)
        assert env.request("HEAD", path, auth=None).status == 401
        assert env.request("GET", path).status == 200
    assert env.json("GET", "/config")[1]["ttl"] == 4.0


def test_right_credentials_work_as_before(env: Env) -> None:
    assert env.json("DELETE", "/switchover")[0] == 200
    status, body = env.json("POST", "/switchover", {"leader": "node1", "candidate": "node2"})
    assert status == 202 and "node2" in body["message"]
    assert env.json("PATCH", "/config", {"ttl": 10})[1]["ttl"] == 10.0
    assert env.json("PUT", "/config", {"ttl": 6})[1]["ttl"] == 6.0
    assert env.store.snapshot(1).settings == ClusterSettings(ttl=6)
    assert env.json("POST", "/restart")[0] == 200
    assert env.json("POST", "/reinitialize")[0] == 200
    assert env.commands.calls == ["restart", "reinitialize force=False"]
    lower = {"Authorization": "basic " + AUTH["Authorization"].split()[1]}  # the scheme is case-blind
    assert env.json("POST", "/failover", {"candidate": "node3"}, auth=lower)[0] == 202


@pytest.mark.parametrize("me", ["primary", "replica"])
def test_every_health_path_answers_anonymously(env: Env, me: str) -> None:
    st = env.publish(CAUGHT_UP) if me == "replica" else env.holder.get()
    assert st is not None
    for path in sorted(HEALTH_PATHS):
        expected = health_status(path, {}, st, time.monotonic())
        for p in {path, path if path == "/" else path + "/"}:
            for method in ("GET", "HEAD", "OPTIONS"):
                assert env.request(method, p, auth=None).status == expected, (method, p)
    for path in ("/status", "/patroni", "/position", "/history"):
        assert env.request("GET", path, auth=None).status == 200, path
    assert env.request("HEAD", "/status", auth=None).status == 200
    assert "position" in env.commands.calls  # /position reached PostgreSQL's reading, as peers need


def test_only_the_listed_reads_are_open(env: Env) -> None:
    """Every route and method: anonymous requests get 401 unless open; wrong methods stay 405."""
    for path, methods in env.server._routes.items():
        for method in ("GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"):
            r = env.request(method, path, {} if method in ("POST", "PUT", "PATCH") else None, auth=None)
            if method not in methods:
                assert r.status == 405, (method, path)
            elif is_open(method, path):
                assert r.status != 401, (method, path)
            else:
                assert r.status == 401, (method, path)
    protected = {"/config", "/cluster", "/switchover", "/failover", "/restart", "/reinitialize",
                 "/decisions"}
    assert protected.isdisjoint(OPEN_PATHS)
    assert {"/metrics", "/dashboard"} <= OPEN_PATHS


def test_metrics_and_the_dashboard_page_are_open_its_data_is_not(env: Env) -> None:
    assert env.request("GET", "/metrics", auth=None).status == 200
    page = env.request("GET", "/dashboard", auth=None)
    assert page.status == 200 and page.headers["Content-Type"].startswith("text/html")
    r = env.request("GET", "/decisions", auth=None)
    assert r.status == 401 and r.headers["WWW-Authenticate"] == CHALLENGE
    # The page's own requests get no challenge: the browser would open its login dialog over it.
    script = env.http.request("GET", env.server.url + "/cluster",
                              headers={"X-Requested-With": "pgwarden-dashboard"})
    assert script.status == 401 and "WWW-Authenticate" not in script.headers


def test_without_configured_credentials_nothing_is_required() -> None:
    e = make_env(auth=None)
    try:
        assert e.json("PATCH", "/config", {"ttl": 10}, auth=None)[0] == 200
        assert e.json("POST", "/restart", auth=None)[0] == 200
    finally:
        e.server.stop()


def test_basic_auth_check() -> None:
    auth = BasicAuth("u", "p:w")
    assert auth.check(basic_header("u", "p:w"))
    assert auth.check("  BASIC " + basic_header("u", "p:w").split()[1] + " ")
    for bad in (None, "", "Basic", "Basic =", basic_header("u", "p"), basic_header("", ""),
                basic_header("u", "p:w "), basic_header("U", "p:w")):
        assert not auth.check(bad), bad
