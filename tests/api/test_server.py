"""The REST API over real loopback HTTP (with credentials, tests/api/env.py): health codes and
bodies, status and cluster documents, operator requests through an in-memory store, error mapping,
and random input that must never produce a 500 or take the server down."""

from __future__ import annotations

import dataclasses
import json
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
import urllib3
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgwarden.api.health import HEALTH_PATHS, health_status
from pgwarden.api.server import ApiServer, ApiServerError
from pgwarden.api.state import StateHolder
from pgwarden.config.load import replace as replace_model
from pgwarden.config.load import to_data
from pgwarden.config.schema import ClusterSettings
from pgwarden.core.logical import SubscriptionSpec
from pgwarden.core.model import MemberInfo, Role
from tests.support.ports import free_port
from tests.support.wait import wait_for

from .env import AUTH, Env, FakeCommands, make_env, seeded_store
from .factory import CAUGHT_UP, LAGGING, LEADER_LSN, PRIMARY
from .memstore import MemStore


@pytest.fixture
def env() -> Iterator[Env]:
    e = make_env()
    yield e
    e.server.stop()


# -- health checks ----------------------------------------------------------------------------------


@pytest.mark.parametrize("me", [PRIMARY, CAUGHT_UP], ids=["primary", "replica"])
def test_every_health_path_every_method(env: Env, me: MemberInfo) -> None:
    st = env.publish(me)
    for path in sorted(HEALTH_PATHS):
        expected = health_status(path, {}, st, time.monotonic())
        r = env.request("GET", path)
        assert r.status == expected, path
        assert json.loads(r.data)["name"] == me.name
        for method in ("HEAD", "OPTIONS"):
            r = env.request(method, path)
            assert (r.status, r.data) == (expected, b""), (method, path)


def test_health_codes_for_primary_and_replica(env: Env) -> None:
    expected = {
        PRIMARY: {"/": 200, "/primary": 200, "/leader": 200, "/replica": 503, "/read-only": 200,
                  "/async": 503, "/health": 200, "/liveness": 200, "/readiness": 200},
        CAUGHT_UP: {"/": 503, "/primary": 503, "/leader": 503, "/replica": 200, "/read-only": 200,
                    "/async": 200, "/health": 200, "/liveness": 200, "/readiness": 200},
    }
    for me, table in expected.items():
        env.publish(me)
        for path, code in table.items():
            assert env.request("GET", path).status == code, (me.name, path)
            assert env.request("OPTIONS", path).status == code, (me.name, path)


def test_health_query_parameters(env: Env) -> None:
    env.publish(LAGGING)
    assert env.request("GET", "/replica?lag=1MB").status == 503
    assert env.request("GET", "/replica?lag=100MB").status == 200
    assert env.request("GET", "/replica/?lag=100MB").status == 200  # trailing slash as in Patroni
    assert env.request("GET", "/replica?tag_nosync=false").status == 200
    assert env.request("GET", "/replica?tag_nosync=true").status == 503
    status, body = env.json("GET", "/replica?lag=plenty")
    assert status == 400 and "invalid lag value 'plenty'" in body["error"]
    assert env.request("HEAD", "/replica?lag=plenty").status == 400


def test_before_first_loop_everything_is_unavailable() -> None:
    store = seeded_store()
    server = ApiServer("127.0.0.1", free_port(), StateHolder(), store, None, "node1")
    server.start()
    try:
        http = urllib3.PoolManager(retries=False)
        assert http.request("GET", server.url + "/health").status == 503
        assert http.request("OPTIONS", server.url + "/liveness").status == 503
        r = http.request("GET", server.url + "/status")
        assert r.status == 503 and "starting" in json.loads(r.data)["error"]
    finally:
        server.stop()


# -- documents --------------------------------------------------------------------------------------


STATUS_KEYS = {"name", "role", "state", "timeline", "lsn", "lsn_text", "received_lsn", "replayed_lsn",
               "lag", "agent_pid", "postmaster_pid", "tags", "version", "pg_version", "holds_lease",
               "paused", "pending_restart", "upstream", "cluster", "store_ok", "message", "running"}


def test_status(env: Env) -> None:
    status, body = env.json("GET", "/status")
    assert status == 200
    assert set(body) >= STATUS_KEYS
    assert body["role"] == "primary" and body["holds_lease"] is True and body["lag"] is None
    assert body["lsn"] == LEADER_LSN and body["lsn_text"] == "0/3000060"
    assert body["cluster"] == "demo" and body["store_ok"] is True
    assert body["tags"]["nofailover"] is False
    assert env.json("GET", "/patroni")[1]["name"] == "node1"

    env.publish(LAGGING)
    body = env.json("GET", "/status")[1]
    assert body["role"] == "replica" and body["lag"] == 64 * 1024 * 1024
    assert body["upstream"] == "node1"
    assert body["start_error"] is None


def test_status_shows_why_postgresql_did_not_start(env: Env) -> None:
    why = ('PostgreSQL did not start: invalid value for parameter "max_connections": "lots"; '
           'FATAL: configuration file "/d/postgresql.conf" contains errors (see /d.log)')
    env.holder.set(dataclasses.replace(env.publish(LAGGING), start_error=why))
    assert env.json("GET", "/status")[1]["start_error"] == why


def test_cluster_during_a_store_outage_says_how_old_it_is(env: Env) -> None:
    """The agent's last snapshot is all /cluster has while the store is away: it says so."""
    st = env.holder.get()
    assert st is not None
    env.holder.set(replace(st, store_ok=False, cluster_at=time.monotonic() - 12.0))
    status, body = env.json("GET", "/cluster")
    assert status == 200 and body["store_reachable"] is False and 11.5 <= body["snapshot_age"] <= 15
    env.holder.set(replace(st, store_ok=True, cluster_at=time.monotonic()))
    body = env.json("GET", "/cluster")[1]
    assert body["store_reachable"] is True and body["snapshot_age"] < 2


def test_cluster(env: Env) -> None:
    status, body = env.json("GET", "/cluster")
    assert status == 200
    assert body["leader"] == "node1" and body["paused"] is False and body["sync"] is None
    assert body["settings"]["ttl"] == 4.0
    names = [m["name"] for m in body["members"]]
    assert names == ["node1", "node2", "node3"]
    by_name = {m["name"]: m for m in body["members"]}
    for m in body["members"]:
        assert set(m) >= {"name", "role", "state", "host", "port", "api_url", "timeline", "lag", "tags",
                          "lsn"}
    assert by_name["node1"]["role"] == "primary" and by_name["node1"]["lag"] is None
    assert by_name["node2"]["lag"] == 0
    assert by_name["node3"]["lag"] == 64 * 1024 * 1024


def test_history_and_config(env: Env) -> None:
    status, body = env.json("GET", "/history")
    assert status == 200
    assert body == [{"timeline": 1, "switch_lsn": 0x2000000, "switch_lsn_text": "0/2000000",
                     "reason": "no recovery target specified", "at": "2023-11-14T22:13:20+00:00",
                     "new_leader": "node1"}]
    status, body = env.json("GET", "/config")
    assert status == 200 and body == to_data(ClusterSettings())


def test_store_unreachable_is_503(env: Env) -> None:
    env.store.down = True
    status, body = env.json("GET", "/config")
    assert status == 503 and "store is unreachable" in body["error"]
    status, body = env.json("POST", "/switchover", {"leader": "node1", "candidate": "node2"})
    assert status == 503 and "store is unreachable" in body["error"]
    # Health checks read the published state only: the store being down does not slow them.
    assert env.request("GET", "/primary").status == 200


# -- switchover / failover --------------------------------------------------------------------------


def test_switchover_accepted(env: Env) -> None:
    status, body = env.json("POST", "/switchover", {"leader": "node1", "candidate": "node2"})
    assert status == 202 and "node2" in body["message"]
    req = env.store.snapshot(1).failover
    assert req is not None
    assert (req.kind, req.leader, req.candidate, req.scheduled_at) == ("switchover", "node1", "node2", None)
    # A second request replaces the first (CAS on its token).
    status, _ = env.json("POST", "/switchover", {"leader": "node1", "member": "node3", "scheduled_at": None})
    assert status == 202
    req = env.store.snapshot(1).failover
    assert req is not None and req.candidate == "node3"
    # Nothing scheduled, so nothing to delete.
    status, body = env.json("DELETE", "/switchover")
    assert status == 404 and "no switchover is scheduled" in body["error"]


def test_scheduled_switchover_and_delete(env: Env) -> None:
    status, body = env.json("POST", "/switchover",
                            {"leader": "node1", "scheduled_at": "2099-01-01T00:00:00Z"})
    assert status == 202 and "scheduled at 2099-01-01T00:00:00+00:00" in body["message"]
    req = env.store.snapshot(1).failover
    assert req is not None and req.scheduled_at == 4070908800.0
    status, body = env.json("DELETE", "/switchover")
    assert status == 200
    assert env.store.snapshot(1).failover is None


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"leader": "node1", "candidate": "nodeX"}, 412,
         "no member named nodeX; members: node1, node2, node3"),
        ({"leader": "node2", "candidate": "node3"}, 412, "node2 is not the leader; the leader is node1"),
        ({"leader": "node1", "candidate": "node1"}, 400, "node1 is already the leader"),
        ({"leader": "node1", "candidate": 7}, 400, "field 'candidate' must be a string or null"),
        ({"leader": "node1", "candidat": "node2"}, 400, "unknown field 'candidat'"),
        ({"leader": "node1", "scheduled_at": "2099-01-01T00:00:00"}, 400, "timezone"),
        ({"leader": "node1", "scheduled_at": "tomorrow"}, 400, "cannot parse scheduled_at 'tomorrow'"),
        ({"leader": "node1", "scheduled_at": "2001-01-01T00:00:00+00:00"}, 400, "in the past"),
        ({"leader": "node1", "scheduled_at": True}, 400, "scheduled_at"),
    ],
)
def test_switchover_refused(env: Env, body: dict[str, Any], status: int, message: str) -> None:
    got_status, got = env.json("POST", "/switchover", body)
    assert got_status == status
    assert message in got["error"]
    assert env.store.snapshot(1).failover is None


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{not json", "malformed JSON"),
        (b"", "must be a JSON object"),
        (b"[1, 2]", "must be a JSON object, not list"),
        (b'"node2"', "must be a JSON object, not str"),
        (b"null", "must be a JSON object, not NoneType"),
        (b'{"leader": NaN}', "NaN is not a valid JSON number"),
        (b"\xff\xfe", "not valid UTF-8"),
        (b"[" * 100000, "malformed JSON"),
    ],
)
def test_switchover_bad_body(env: Env, raw: bytes, message: str) -> None:
    status, body = env.json("POST", "/switchover", raw=raw)
    assert status == 400
    assert message in body["error"]


def test_failover(env: Env) -> None:
    status, body = env.json("POST", "/failover", {"candidate": "node3"})
    assert status == 202 and body["message"] == "failover to node3 requested"
    req = env.store.snapshot(1).failover
    assert req is not None and (req.kind, req.candidate) == ("failover", "node3")

    assert env.json("POST", "/failover", {})[0] == 400
    status, body = env.json("POST", "/failover", {"candidate": "node2", "scheduled_at": "2099-01-01T00:00Z"})
    assert status == 400 and "can't be scheduled" in body["error"]
    status, body = env.json("POST", "/failover", {"candidate": "ghost"})
    assert status == 412 and "no member named ghost" in body["error"]
    # Patroni: a failover that names the leader is a switchover.
    status, _ = env.json("POST", "/failover", {"leader": "node1", "candidate": "node2"})
    req = env.store.snapshot(1).failover
    assert status == 202 and req is not None and req.kind == "switchover"


# -- settings ---------------------------------------------------------------------------------------


def test_patch_config(env: Env) -> None:
    status, body = env.json("PATCH", "/config", {"ttl": 10, "parameters": {"work_mem": "8MB", "my.x": 1}})
    assert status == 200 and body["ttl"] == 10.0 and body["parameters"] == {"work_mem": "8MB", "my.x": 1}
    status, body = env.json("PATCH", "/config", {"parameters": {"my.x": None}, "maximum_lag_on_failover": 5})
    assert status == 200 and body["parameters"] == {"work_mem": "8MB"}
    assert body["ttl"] == 10.0 and body["maximum_lag_on_failover"] == 5
    # Patroni's shape works too; null restores a setting's default.
    status, body = env.json("PATCH", "/config",
                            {"postgresql": {"parameters": {"work_mem": None}}, "ttl": None})
    assert status == 200 and body["parameters"] == {} and body["ttl"] == 4.0
    stored = env.store.snapshot(1).settings
    assert stored.ttl == 4.0 and stored.maximum_lag_on_failover == 5


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"tll": 10}, "unknown setting 'tll'; did you mean 'ttl'?"),
        ({"ttl": "soon"}, "'ttl'"),
        ({"ttl": 1}, "ttl must be at least 2"),
        ({"loop_wait": 5}, "ttl must exceed 2 * loop_wait"),
        ({"retry_timeout": 1.6}, "loop_wait + 2 * retry_timeout must not exceed ttl"),
        ({"parameters": "work_mem=1"}, "parameters must be an object"),
        ({"parameters": {"work_mem": {"a": 1}}}, "parameters"),
        ({"synchronous_mode": "sometimes"}, "synchronous_mode"),
        ({"postgresql": {"bin_dir": "/x"}}, "unknown setting 'postgresql.bin_dir'"),
    ],
)
def test_patch_config_refused(env: Env, patch: dict[str, Any], message: str) -> None:
    status, body = env.json("PATCH", "/config", patch)
    assert status == 400
    assert message in body["error"]
    assert env.store.snapshot(1).settings == ClusterSettings()


def test_put_config_replaces(env: Env) -> None:
    env.json("PATCH", "/config", {"parameters": {"work_mem": "8MB"}})
    status, body = env.json("PUT", "/config", {"ttl": 6})
    assert status == 200 and body["ttl"] == 6.0 and body["parameters"] == {}
    status, body = env.json("PUT", "/config", {"ttl": 6, "pased": True})
    assert status == 400 and "unknown key 'pased'; did you mean 'paused'?" in body["error"]


def test_a_subscriptions_source_password_is_never_shown_and_survives_a_round_trip() -> None:
    store = seeded_store()
    source = "host=a,b port=5432,5433 user=postgres password=s3cret-pw dbname=postgres"
    sub = SubscriptionSpec(name="orders_eu", source=source, publications=("orders",))
    assert store.set_settings(ClusterSettings(subscriptions=(sub,)), store.snapshot(1).settings_token, 1)
    e = make_env(store=store)
    try:
        for path in ("/config", "/cluster"):
            status, body = e.json("GET", path)
            assert status == 200 and "s3cret-pw" not in json.dumps(body), path
        shown = e.json("GET", "/config")[1]
        assert "password=***" in shown["subscriptions"][0]["source"]
        status, _ = e.json("PUT", "/config", {**shown, "ttl": 6})  # what GET showed, sent back
        assert status == 200
        assert store.snapshot(1).settings.subscriptions[0].source == source
        status, _ = e.json("PATCH", "/config", {"ttl": 8})
        assert status == 200 and store.snapshot(1).settings.subscriptions[0].source == source
        other = shown["subscriptions"][0]["source"].replace("host=a,b", "host=c")
        status, _ = e.json("PATCH", "/config", {"subscriptions": [{**shown["subscriptions"][0],
                                                                  "source": other}]})
        assert status == 200  # a changed source is the caller's, password and all
        assert store.snapshot(1).settings.subscriptions[0].source == other
    finally:
        e.server.stop()


class RacingStore(MemStore):
    """Another writer changes the settings between our read and our write."""

    def set_settings(self, settings: ClusterSettings, token: str | None, timeout: float) -> bool:
        current = self.snapshot(timeout)
        if current.settings_token:  # once there are settings to overwrite
            super().set_settings(replace_model(current.settings, paused=True), current.settings_token,
                                 timeout)
        return super().set_settings(settings, token, timeout)


def test_config_cas_conflict_is_409() -> None:
    store = RacingStore()
    assert store.set_settings(ClusterSettings(), None, 1)
    e = make_env(store=store)
    try:
        status, body = e.json("PATCH", "/config", {"ttl": 8})
        assert status == 409 and "changed" in body["error"]
        assert e.store.snapshot(1).settings.ttl == 4.0
    finally:
        e.server.stop()


# -- local commands ---------------------------------------------------------------------------------


def test_restart_and_reinitialize(env: Env) -> None:
    status, body = env.json("POST", "/restart")
    assert (status, body) == (200, {"message": "restart requested"})
    status, body = env.json("POST", "/reinitialize", {"force": True})
    assert (status, body) == (200, {"message": "reinitialize requested"})
    assert env.commands.calls == ["restart", "reinitialize force=True"]

    status, body = env.json("POST", "/restart", {"role": "replica"})
    assert status == 412 and "this node is primary" in body["error"]
    status, body = env.json("POST", "/restart", {"restart_pending": True})
    assert status == 412 and "no restart is pending" in body["error"]
    assert env.json("POST", "/restart", {"role": "master"})[0] == 200
    assert env.json("POST", "/restart", {"role": "boss"})[0] == 400
    assert env.json("POST", "/restart", {"schedule": "2099-01-01T00:00Z"})[0] == 400
    assert env.json("POST", "/reinitialize", {"force": "yes"})[0] == 400

    env.commands.refuse = "the primary cannot be reinitialized"
    status, body = env.json("POST", "/reinitialize")
    assert status == 409 and body["error"] == "the primary cannot be reinitialized"


def test_position_is_read_when_asked(env: Env) -> None:
    status, body = env.json("GET", "/position")
    assert status == 200 and env.commands.calls == ["position"]
    assert body == {"name": "node2", "running": True, "role": "replica", "timeline": 3,
                    "lsn": LEADER_LSN + 5, "received_lsn": LEADER_LSN + 5, "replayed_lsn": LEADER_LSN}


def test_commands_unavailable() -> None:
    e = make_env(with_commands=False)
    try:
        status, body = e.json("POST", "/restart")
        assert status == 503 and "local commands" in body["error"]
    finally:
        e.server.stop()


# -- routing errors and robustness ------------------------------------------------------------------


def test_unknown_path_and_wrong_method(env: Env) -> None:
    status, body = env.json("GET", "/nope")
    assert status == 404 and body["error"] == "no such endpoint: /nope"
    r = env.request("DELETE", "/status")
    assert r.status == 405 and "GET" in r.headers["Allow"]
    assert "method DELETE is not allowed on /status" in json.loads(r.data)["error"]
    assert env.request("POST", "/replica").status == 405
    assert env.request("GET", "/switchover").status == 405


def test_slow_store_does_not_block_health_checks() -> None:
    entered, release = threading.Event(), threading.Event()

    class SlowStore(MemStore):
        def snapshot(self, timeout: float) -> Any:
            if threading.current_thread().name.startswith("pgwarden-api"):
                entered.set()
                release.wait(timeout)
            return super().snapshot(timeout)

    store = SlowStore()
    for m in (PRIMARY, CAUGHT_UP):
        store.publish_member(m, 30, 1)
    store.acquire_leader("node1", 3600, 1)
    e = make_env(store=store)
    results: list[int] = []
    try:
        t = threading.Thread(target=lambda: results.append(e.request("GET", "/config").status))
        t.start()
        wait_for(entered.is_set, 5, "the /config request to reach the store")
        for _ in range(5):
            assert e.request("GET", "/primary").status == 200
        release.set()
        t.join(10)
        assert results == [200]
    finally:
        release.set()
        e.server.stop()


def test_port_taken_is_a_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        server = ApiServer("127.0.0.1", port, StateHolder(), None, None, "node1")
        with pytest.raises(ApiServerError, match=f"cannot listen on 127.0.0.1:{port}"):
            server.start()


def test_stop_frees_the_port_and_is_idempotent() -> None:
    port = free_port()
    server = ApiServer("127.0.0.1", port, StateHolder(), None, None, "node1")
    server.start()
    assert server.url == f"http://127.0.0.1:{port}"
    server.stop()
    server.stop()
    again = ApiServer("127.0.0.1", port, StateHolder(), None, None, "node1")
    again.start()
    again.stop()


@pytest.fixture(scope="module")
def fuzz_env() -> Iterator[Env]:
    e = make_env()
    yield e
    e.server.stop()


METHODS = ["GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"]
KNOWN = [*sorted(HEALTH_PATHS), "/status", "/patroni", "/cluster", "/history", "/config",
         "/switchover", "/failover", "/restart", "/reinitialize"]
paths = st.one_of(
    st.sampled_from(KNOWN),
    st.builds(lambda p, q: p + "?" + q, st.sampled_from(KNOWN), st.text(max_size=30)),
    st.text(max_size=40).map(lambda s: "/" + s),
).map(lambda p: urllib.parse.quote(p, safe="/?&=%+"))
bodies = st.one_of(
    st.none(),
    st.binary(max_size=200),
    st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                 | st.text(max_size=10),
                 lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=12), c, max_size=4),
                 max_leaves=10).map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.sampled_from(["leader", "candidate", "member", "scheduled_at", "force", "ttl",
                                     "parameters", "role", "restart_pending"]),
                    st.none() | st.booleans() | st.integers() | st.text(max_size=8), max_size=4)
    .map(lambda v: json.dumps(v).encode()),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from(METHODS), path=paths, body=bodies, creds=st.booleans())
def test_fuzz_requests_never_500(fuzz_env: Env, method: str, path: str, body: bytes | None, creds: bool,
                                 ) -> None:
    # Writes would change what later examples see; the store accepts them, which is fine.
    r = fuzz_env.http.request(method, fuzz_env.server.url + path, body=body, headers=AUTH if creds else None)
    assert r.status < 500 or r.status == 503, (method, path, body, r.status, r.data[:200])
    if r.data and method != "HEAD":
        assert isinstance(json.loads(r.data), dict | list)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(min_size=1, max_size=300))
def test_fuzz_raw_bytes_never_500(fuzz_env: Env, data: bytes) -> None:
    host, port = "127.0.0.1", int(fuzz_env.server.url.rsplit(":", 1)[1])
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        reply = b""
        try:
            while chunk := s.recv(4096):
                reply += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    assert not reply.startswith(b"HTTP/1.1 500"), reply[:200]
    assert fuzz_env.request("GET", "/health").status == 200


def test_server_still_up_after_fuzzing(fuzz_env: Env) -> None:
    assert fuzz_env.request("GET", "/status").status == 200


def test_published_state_is_what_is_served(env: Env) -> None:
    env.publish(replace(CAUGHT_UP, state="starting", running=False))
    body = env.json("GET", "/status")[1]
    assert (body["state"], body["running"], body["role"]) == ("starting", False, Role.REPLICA.value)


def test_unexpected_error_is_a_500_without_traceback(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(FakeCommands):
        def request_restart(self) -> str:
            raise RuntimeError("secret internals")

    e = make_env(commands=Broken())
    try:
        status, body = e.json("POST", "/restart")
        assert (status, body) == (500, {"error": "internal error: RuntimeError"})
        assert "secret internals" in caplog.text  # logged for the operator, not sent to the client
        assert e.request("GET", "/health").status == 200
    finally:
        e.server.stop()


def test_leader_check_needs_a_leader_name_and_the_credentials(env: Env) -> None:
    """GET /leader-check (rule 16): this node's own check, now, of the leader named. It makes the
    node connect to the leader's ports and to its PostgreSQL, so it is not open to anyone."""
    status, body = env.json("GET", "/leader-check?leader=node1")
    assert status == 200 and env.commands.calls == ["leader-check node1"]
    assert body == {"name": "node2", "leader": "node1", "refused": True, "attached": False}
    status, body = env.json("GET", "/leader-check")
    assert status == 400 and "leader=NAME" in body["error"]
    r = env.request("GET", "/leader-check?leader=node1", auth=None)
    assert r.status == 401
    assert env.commands.calls == ["leader-check node1"]  # neither reached the node's check
