"""`pgwarden ctl restart|reinit` against a real ApiServer on loopback that requires credentials:
the node file's `restapi.authentication` is sent; without it, or with the wrong one, one line says
which file and key to fix, and the member did nothing."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pgwarden.api.auth import BasicAuth
from pgwarden.api.server import ApiServer
from pgwarden.api.state import NodeState, StateHolder
from pgwarden.core.model import Role
from pgwarden.store.cluster import ClusterStore as Store
from tests.api.env import FakeCommands
from tests.api.factory import CAUGHT_UP
from tests.cli.helpers import member, publish_cluster, run_cli, write_node_file
from tests.support.etcd import EtcdServer
from tests.support.ports import free_port

pytestmark = pytest.mark.integration

USER, PASSWORD = "pgwarden", "n0t-guessable"


@pytest.fixture(autouse=True)
def no_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(""))


@pytest.fixture
def member_api(store: Store) -> Iterator[tuple[ApiServer, FakeCommands]]:
    """node2's REST API (credentials required), published in the store with node1 leading."""
    commands = FakeCommands()
    holder = StateHolder(NodeState(member=CAUGHT_UP, cluster=None, store_ok=True, holds_lease=False,
                                   last_loop_at=0.0, started_at=0.0))
    server = ApiServer("127.0.0.1", free_port(), holder, None, commands, "node2",
                       auth=BasicAuth(USER, PASSWORD))
    server.start()
    publish_cluster(store, [member("node1", Role.PRIMARY, 5432, 100),
                            member("node2", Role.REPLICA, 5433, 100, api_url=server.url)], leader="node1")
    yield server, commands
    server.stop()


def node_file(tmp_path: Path, cluster: str, etcd: EtcdServer, auth: dict[str, Any] | None) -> Path:
    restapi = {"authentication": auth} if auth is not None else {}
    return write_node_file(tmp_path / "node1.yaml", cluster, etcd.endpoint, restapi=restapi)


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pgwarden: error: "), err
    return lines[0]


def test_ctl_sends_the_node_files_credentials(tmp_path: Path, cluster: str, etcd: EtcdServer,
                                              member_api: tuple[ApiServer, FakeCommands]) -> None:
    path = node_file(tmp_path, cluster, etcd, {"username": USER, "password": PASSWORD})
    r = run_cli("ctl", "-c", str(path), "restart", "node2")
    assert (r.code, r.out.strip()) == (0, "node2: restart requested"), r.err
    r = run_cli("ctl", "-c", str(path), "reinit", "node2", "--force", "--no-wait")
    assert (r.code, r.out.strip()) == (0, "node2: reinitialize requested"), r.err
    assert member_api[1].calls == ["restart", "reinitialize force=False"]


def test_ctl_reads_a_password_file(tmp_path: Path, cluster: str, etcd: EtcdServer,
                                   member_api: tuple[ApiServer, FakeCommands]) -> None:
    secret = tmp_path / "api-password"
    secret.write_text(PASSWORD + "\n")
    path = node_file(tmp_path, cluster, etcd, {"username": USER, "password_file": str(secret)})
    assert run_cli("ctl", "-c", str(path), "restart", "node2").code == 0
    secret.unlink()
    r = run_cli("ctl", "-c", str(path), "restart", "node2")
    assert r.code == 2  # a bad node file, found when it is loaded
    assert f"{path}: restapi.authentication: cannot read password_file {secret}" in one_line(r.err)
    assert member_api[1].calls == ["restart"]


def test_ctl_without_credentials_says_which_key_to_set(tmp_path: Path, cluster: str, etcd: EtcdServer,
                                                       member_api: tuple[ApiServer, FakeCommands]) -> None:
    server, commands = member_api
    path = node_file(tmp_path, cluster, etcd, None)
    for args in (["restart", "node2"], ["reinit", "node2", "--force"]):
        r = run_cli("ctl", "-c", str(path), *args)
        assert r.code == 1 and r.out == ""
        line = one_line(r.err)
        assert f"node2's REST API ({server.url}/" in line and "requires credentials (HTTP 401)" in line
        assert f"set restapi.authentication (username, and password or password_file) in {path}" in line
    assert commands.calls == []


def test_ctl_with_the_wrong_credentials_names_the_file(tmp_path: Path, cluster: str, etcd: EtcdServer,
                                                       member_api: tuple[ApiServer, FakeCommands]) -> None:
    path = node_file(tmp_path, cluster, etcd, {"username": USER, "password": "guess"})
    r = run_cli("ctl", "-c", str(path), "restart", "node2")
    assert r.code == 1
    line = one_line(r.err)
    assert f"refused the credentials in restapi.authentication of {path} (HTTP 401)" in line
    assert member_api[1].calls == []
