"""`pgwarden ctl` against a real etcd, with the cluster published directly through the Store API
(what agents would write), so no agent or PostgreSQL is needed."""

from __future__ import annotations

import dataclasses
import io
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from pgwarden.cli.ctl_context import SWITCHOVER_TIMEOUT, update_settings
from pgwarden.config.load import replace, to_data
from pgwarden.config.schema import ClusterSettings, EtcdConfig, StoreConfig
from pgwarden.core.leaderless import request_patience
from pgwarden.core.model import FailoverRequest, HistoryEntry, MemberInfo, Role, Tags
from pgwarden.store.cluster import ClusterStore
from pgwarden.store.factory import open_store
from tests.cli.helpers import TIMEOUT, Result, member, publish_cluster, run_cli
from tests.support.etcd import EtcdServer

MB = 1024 * 1024

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def no_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Commands that ask for confirmation see a non-interactive stdin, as in scripts."""
    monkeypatch.setattr("sys.stdin", io.StringIO(""))


def three(store: ClusterStore, **overrides: MemberInfo) -> list[MemberInfo]:
    members = [
        member("node1", Role.PRIMARY, 5432, 20 * MB),
        member("node2", Role.REPLICA, 5433, 19 * MB, upstream="node1"),
        member("node3", Role.REPLICA, 5434, 20 * MB, upstream="node2", tags=Tags(nofailover=True)),
    ]
    members = [overrides.get(m.name, m) for m in members]
    publish_cluster(store, members, leader="node1")
    return members


def test_list_json(node_file: Path, store: ClusterStore) -> None:
    three(store)
    r = run_cli("ctl", "-c", str(node_file), "list", "--format", "json")
    assert r.code == 0, r.err
    rows = json.loads(r.out)
    assert [(m["name"], m["role"], m["lag"]) for m in rows] == [
        ("node1", "primary", 0), ("node2", "replica", MB), ("node3", "replica", 0)]
    assert set(rows[0]) >= {"name", "role", "state", "host", "port", "api_url", "timeline", "lag"}
    assert rows[2]["tags"]["nofailover"] is True


def test_list_table(node_file: Path, store: ClusterStore) -> None:
    three(store)
    r = run_cli("ctl", "-c", str(node_file), "list")
    assert r.code == 0, r.err
    for text in ("Member", "Lag (MB)", "node1", "primary", "127.0.0.1:5433", "1.0", "nofailover"):
        assert text in r.out


def test_list_empty_cluster(node_file: Path) -> None:
    r = run_cli("ctl", "-c", str(node_file), "list", "--format", "json")
    assert r.code == 0 and json.loads(r.out) == []


def test_show_config(node_file: Path) -> None:
    r = run_cli("ctl", "-c", str(node_file), "show-config")
    assert r.code == 0, r.err
    assert yaml.safe_load(r.out) == to_data(ClusterSettings())


def test_edit_config_prints_diff_and_writes(pg_node_file: Path, store: ClusterStore) -> None:
    node_file = pg_node_file
    r = run_cli("ctl", "-c", str(node_file), "edit-config", "--set", "ttl=10",
                "--set", "parameters.work_mem=8MB", "--set", "synchronous_mode=on")
    assert r.code == 0, r.err
    assert "-ttl: 4.0" in r.out and "+ttl: 10.0" in r.out and "+  work_mem: 8MB" in r.out
    s = store.snapshot(TIMEOUT).settings
    assert s.ttl == 10 and s.parameters == {"work_mem": "8MB"} and s.synchronous_mode == "on"
    again = run_cli("ctl", "-c", str(node_file), "edit-config", "--set", "ttl=10")
    assert again.code == 0 and again.out.strip() == "no changes"


def test_edit_config_bad_key_suggests(node_file: Path, store: ClusterStore) -> None:
    r = run_cli("ctl", "-c", str(node_file), "edit-config", "--set", "loop_wiat=2")
    assert r.code == 2
    assert r.err.startswith("pgwarden: error: unknown setting 'loop_wiat'; did you mean 'loop_wait'?")
    assert store.snapshot(TIMEOUT).settings_token == ""  # nothing written


def test_edit_config_invalid_value(node_file: Path) -> None:
    r = run_cli("ctl", "-c", str(node_file), "edit-config", "--set", "ttl=1")
    assert r.code == 2
    assert "ttl must be at least" in r.err


def test_edit_config_needs_set(node_file: Path) -> None:
    r = run_cli("ctl", "-c", str(node_file), "edit-config")
    assert r.code == 2 and "--set" in r.err


def test_settings_cas_retries_after_a_concurrent_write(
    cluster: str, etcd: EtcdServer, store: ClusterStore
) -> None:
    other = open_store(StoreConfig(etcd=EtcdConfig(hosts=[etcd.endpoint])), cluster)
    calls = 0

    def change(s: ClusterSettings) -> ClusterSettings:
        nonlocal calls
        calls += 1
        if calls == 1:  # someone else writes between our read and our compare-and-swap
            assert other.set_settings(replace(s, loop_wait=0.5), None, TIMEOUT)
        return replace(s, paused=True)

    try:
        update_settings(store, change)
    finally:
        other.close()
    s = store.snapshot(TIMEOUT).settings
    assert calls == 2 and s.paused and s.loop_wait == 0.5  # the other write survived


def test_pause_resume(node_file: Path, store: ClusterStore) -> None:
    r = run_cli("ctl", "-c", str(node_file), "pause")
    assert r.code == 0 and "paused" in r.out
    assert store.snapshot(TIMEOUT).settings.paused
    r = run_cli("ctl", "-c", str(node_file), "pause")
    assert r.code == 0 and "already paused" in r.out
    r = run_cli("ctl", "-c", str(node_file), "resume")
    assert r.code == 0 and "resumed" in r.out
    assert not store.snapshot(TIMEOUT).settings.paused


def test_history(node_file: Path, store: ClusterStore) -> None:
    r = run_cli("ctl", "-c", str(node_file), "history")
    assert r.code == 0 and "no timeline history" in r.out
    store.set_history((HistoryEntry(1, 0x3000060, "switchover", 1.7e9, "node2"),), TIMEOUT)
    r = run_cli("ctl", "-c", str(node_file), "history")
    assert r.code == 0
    assert "0/3000060" in r.out and "switchover" in r.out and "node2" in r.out
    r = run_cli("ctl", "-c", str(node_file), "history", "--format", "json")
    assert json.loads(r.out) == [{"timeline": 1, "switch_lsn": 0x3000060, "reason": "switchover",
                                  "at": 1.7e9, "new_leader": "node2"}]


def test_topology(node_file: Path, store: ClusterStore) -> None:
    three(store)
    r = run_cli("ctl", "-c", str(node_file), "topology")
    assert r.code == 0, r.err
    lines = [ln for ln in r.out.splitlines() if "node" in ln]
    assert [ln.strip("│├└─ ").split()[0] for ln in lines] == ["node1", "node2", "node3"]
    assert lines[0].index("node1") < lines[1].index("node2") < lines[2].index("node3")


def test_dsn(node_file: Path, store: ClusterStore) -> None:
    three(store)
    r = run_cli("ctl", "-c", str(node_file), "dsn")
    assert r.code == 0, r.err
    assert r.out.strip() == ("postgresql://postgres@127.0.0.1:5432,127.0.0.1:5433,"
                             "127.0.0.1:5434/postgres?target_session_attrs=read-write&connect_timeout=2")
    r = run_cli("ctl", "-c", str(node_file), "dsn", "--with-password")  # asked for explicitly
    assert "postgresql://postgres:s3cr%40t%2Fpw@127.0.0.1:5432," in r.out
    r = run_cli("ctl", "-c", str(node_file), "dsn", "--replicas")
    assert "target_session_attrs=prefer-standby" in r.out


def test_dsn_logical_goes_through_the_gates_or_says_how_to_run_them(
        node_file: Path, store: ClusterStore) -> None:
    members = three(store)
    r = run_cli("ctl", "-c", str(node_file), "dsn", "--logical")
    assert r.code == 1 and "no member of cluster" in r.err and "logical_gate_port" in r.err
    for i, m in enumerate(members[:2]):
        store.publish_member(dataclasses.replace(m, logical_gate_port=6000 + i), 30.0, TIMEOUT)
    r = run_cli("ctl", "-c", str(node_file), "dsn", "--logical")
    assert r.code == 0, r.err
    assert r.out.strip() == ("postgresql://postgres@127.0.0.1:6000,127.0.0.1:6001/postgres"
                             "?target_session_attrs=read-write&connect_timeout=2")
    r = run_cli("ctl", "-c", str(node_file), "dsn", "--logical", "--replicas")
    assert r.code != 0 and "drop --replicas" in r.err


# -- switchover / failover ---------------------------------------------------------------------


def test_switchover_unknown_candidate(node_file: Path, store: ClusterStore) -> None:
    three(store)
    r = run_cli("ctl", "-c", str(node_file), "switchover", "--candidate", "node9", "--force")
    assert r.code == 1
    assert "no member named node9" in r.err and "node2" in r.err
    assert store.snapshot(TIMEOUT).failover is None


def test_switchover_wrong_leader(node_file: Path, store: ClusterStore) -> None:
    three(store)
    r = run_cli("ctl", "-c", str(node_file), "switchover", "--leader", "node2", "--force")
    assert r.code == 1 and "node2 is not the leader; the leader is node1" in r.err


def test_switchover_to_nofailover_member(node_file: Path, store: ClusterStore) -> None:
    three(store)
    r = run_cli("ctl", "-c", str(node_file), "switchover", "--candidate", "node3", "--force")
    assert r.code == 1 and "nofailover" in r.err


def test_switchover_bad_schedule(node_file: Path, store: ClusterStore) -> None:
    three(store)
    r = run_cli("ctl", "-c", str(node_file), "switchover", "--scheduled", "tomorrow", "--force")
    assert r.code == 2 and "ISO 8601" in r.err
    r = run_cli("ctl", "-c", str(node_file), "switchover", "--scheduled", "2001-01-01T00:00:00+00:00",
                "--force")
    assert r.code == 1 and "in the past" in r.err


def test_switchover_without_force_refuses_when_not_a_terminal(node_file: Path, store: ClusterStore) -> None:
    three(store)
    r = run_cli("ctl", "-c", str(node_file), "switchover", "--candidate", "node2")
    assert r.code == 2 and "pass --force" in r.err
    assert store.snapshot(TIMEOUT).failover is None


def test_switchover_scheduled_is_written_and_returns(node_file: Path, store: ClusterStore) -> None:
    three(store)
    r = run_cli("ctl", "-c", str(node_file), "switchover", "--candidate", "node2",
                "--scheduled", "2099-01-01T00:00:00+00:00", "--force")
    assert r.code == 0, r.err
    assert "scheduled" in r.out
    req = store.snapshot(TIMEOUT).failover
    assert req is not None and req.kind == "switchover" and req.candidate == "node2"
    assert req.leader == "node1" and req.scheduled_at == 4070908800.0


def test_switchover_times_out_when_nobody_acts(node_file: Path, store: ClusterStore) -> None:
    three(store)
    r = run_cli("ctl", "-c", str(node_file), "switchover", "--candidate", "node2", "--force",
                "--timeout", "1")
    assert r.code == 1
    assert "did not complete within 1 s" in r.err and "the leader is node1" in r.err
    req = store.snapshot(TIMEOUT).failover
    assert req is not None and req.candidate == "node2"


def _ctl_while_agents_play(etcd: EtcdServer, cluster: str, node_file: Path,
                           on_request: Callable[[ClusterStore], None], *args: str) -> Result:
    """Run `ctl` while a thread plays the agents: once a request appears in the store, it calls
    `on_request` with its own store connection."""
    agents = open_store(StoreConfig(etcd=EtcdConfig(hosts=[etcd.endpoint])), cluster)
    stop = threading.Event()

    def play() -> None:
        while not stop.is_set():
            if agents.snapshot(TIMEOUT).failover is not None:
                on_request(agents)
                return
            agents.wait_for_change(0.5)

    t = threading.Thread(target=play, daemon=True)
    t.start()
    try:
        return run_cli("ctl", "-c", str(node_file), *args)
    finally:
        stop.set()
        t.join(10)
        agents.close()


def test_switchover_completes_when_the_cluster_acts(
    node_file: Path, store: ClusterStore, cluster: str, etcd: EtcdServer
) -> None:
    """Play the agents: once the request appears, node1 releases the lease and node2 takes it
    and publishes itself as a running primary."""
    three(store)

    def hand_over(agents: ClusterStore) -> None:
        store.release_leader("node1", TIMEOUT)
        agents.clear_failover(TIMEOUT)
        assert agents.acquire_leader("node2", 60, TIMEOUT)
        agents.publish_member(member("node2", Role.PRIMARY, 5433, 21 * MB, timeline=2), 60, TIMEOUT)

    r = _ctl_while_agents_play(etcd, cluster, node_file, hand_over, "switchover", "--force",
                               "--timeout", "20")
    assert r.code == 0, r.err
    assert "node2 is the primary" in r.out


def test_switchover_the_leader_drops_is_reported_as_such(
    node_file: Path, store: ClusterStore, cluster: str, etcd: EtcdServer
) -> None:
    """Play the leader that gives up on the request (its candidate could not take over): the
    request vanishes while node1 still leads. ctl says the switchover did not happen."""
    three(store)

    def drop(agents: ClusterStore) -> None:
        agents.clear_failover(TIMEOUT)

    r = _ctl_while_agents_play(etcd, cluster, node_file, drop, "switchover", "--candidate", "node2",
                               "--force", "--timeout", "20")
    assert r.code == 1
    assert "did not happen" in r.err and "node1 dropped the request" in r.err, r.err
    assert store.snapshot(TIMEOUT).leader is not None


def test_a_request_replaced_meanwhile_says_so_at_once(
    node_file: Path, store: ClusterStore, cluster: str, etcd: EtcdServer
) -> None:
    """Two operators at once: the other's request overwrote ours. ctl says so instead of waiting
    out its timeout and calling it a timeout."""
    three(store)

    def overwrite(agents: ClusterStore) -> None:
        mine = agents.snapshot(TIMEOUT).failover
        assert mine is not None
        assert agents.set_failover(FailoverRequest("failover", None, "node2", None), mine.token, TIMEOUT)

    started = time.monotonic()
    r = _ctl_while_agents_play(etcd, cluster, node_file, overwrite, "switchover", "--force",
                               "--timeout", "30")
    assert r.code == 1
    assert "another request replaced it (failover to node2)" in r.err, r.err
    assert time.monotonic() - started < 15


def test_failover_unknown_candidate(node_file: Path, store: ClusterStore) -> None:
    three(store)
    r = run_cli("ctl", "-c", str(node_file), "failover", "--candidate", "nodeX", "--force")
    assert r.code == 1 and "no member named nodeX" in r.err


def test_failover_needs_candidate(node_file: Path) -> None:
    r = run_cli("ctl", "-c", str(node_file), "failover", "--force")
    assert r.code == 2 and "--candidate" in r.err


# -- restart / reinit over the REST API ---------------------------------------------------------


class FakeApi(BaseHTTPRequestHandler):
    calls: list[str] = []

    def do_POST(self) -> None:
        FakeApi.calls.append(self.path)
        length = int(self.headers.get("Content-Length", 0))
        self.rfile.read(length)
        status, body = (200, {"message": "restarted"}) if self.path == "/restart" else (
            503, {"message": "reinitialize is not possible on the primary"})
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def fake_api() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeApi)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    FakeApi.calls = []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    t.join(5)


def test_restart_and_reinit(node_file: Path, store: ClusterStore, fake_api: str) -> None:
    three(store, node2=member("node2", Role.REPLICA, 5433, 19 * MB, api_url=fake_api))
    r = run_cli("ctl", "-c", str(node_file), "restart", "node2")
    assert r.code == 0, r.err
    assert r.out.strip() == "node2: restarted"
    r = run_cli("ctl", "-c", str(node_file), "reinit", "node2")
    assert r.code == 2 and "pass --force" in r.err  # destructive: asks first
    r = run_cli("ctl", "-c", str(node_file), "reinit", "node2", "--force")
    assert r.code == 1
    assert "node2: reinitialize is not possible on the primary (HTTP 503)" in r.err
    assert FakeApi.calls == ["/restart", "/reinitialize"]


def test_restart_unknown_node_lists_members(node_file: Path, store: ClusterStore) -> None:
    three(store)
    r = run_cli("ctl", "-c", str(node_file), "restart", "node7")
    assert r.code == 1
    assert "no member named 'node7'" in r.err and "node1, node2, node3" in r.err


def test_restart_unreachable_member(node_file: Path, store: ClusterStore) -> None:
    from tests.support.ports import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    three(store, node2=member("node2", Role.REPLICA, 5433, 1, api_url=dead))
    r = run_cli("ctl", "-c", str(node_file), "restart", "node2")
    assert r.code == 1 and f"cannot reach node2's REST API at {dead}/restart" in r.err


def test_ctl_switchover_waits_longer_than_the_leader_keeps_a_request() -> None:
    """A request the leader drops (it could not carry it out) is reported by a still-waiting
    `ctl switchover`, not as a time-out."""
    assert request_patience(ClusterSettings()) < SWITCHOVER_TIMEOUT
