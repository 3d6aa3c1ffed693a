"""PATCH/PUT /config check parameter values against the node's pg_settings before storing them:
`max_connections: lots` used to be stored and left every restarted node looping on pg_ctl start."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from pgwarden.api.server import ApiServer
from pgwarden.config.schema import ClusterSettings
from pgwarden.core.parameters import SettingSpec
from tests.support.ports import free_port

from .env import SERVER_AUTH, Env, make_env


@pytest.fixture
def env() -> Iterator[Env]:
    e = make_env()
    yield e
    e.server.stop()


@pytest.mark.parametrize(("method", "body", "line"), [
    ("PATCH", {"parameters": {"max_connections": "lots"}},
     "parameters.max_connections: 'lots' is refused: expected a number without a unit"),
    ("PATCH", {"postgresql": {"parameters": {"max_connections": 0}}},
     "parameters.max_connections: 0 is refused: 0 is outside the range 1 .. 262143"),
    ("PATCH", {"parameters": {"shared_buffers": "1kB"}},
     "parameters.shared_buffers: '1kB' is refused: 0 is outside the range 16 .. 1073741823 "
     "(in units of 8kB)"),
    ("PATCH", {"parameters": {"wal_level": "physical"}},
     "parameters.wal_level: 'physical' is refused: expected one of minimal, replica, logical"),
    ("PATCH", {"parameters": {"hot_standby": "perhaps"}}, "parameters.hot_standby: 'perhaps' is refused"),
    ("PATCH", {"parameters": {"max_conections": 10}}, "PostgreSQL has no parameter 'max_conections'"),
    ("PUT", {"parameters": {"work_mem": "8MB", "max_connections": "lots"}}, "parameters.max_connections"),
])
def test_a_value_postgresql_would_refuse_is_not_stored(env: Env, method: str, body: dict[str, Any],
                                                       line: str) -> None:
    before = env.store.snapshot(1).settings
    status, answer = env.json(method, "/config", body)
    assert status == 400 and line in answer["error"] and "\n" not in answer["error"]
    assert env.store.snapshot(1).settings == before


def test_good_values_are_stored(env: Env) -> None:
    status, body = env.json("PATCH", "/config", {"parameters": {
        "max_connections": "200", "shared_buffers": "256MB", "wal_level": "logical", "hot_standby": "on",
        "statement_timeout": "30s", "checkpoint_completion_target": 0.8, "myext.x": "1"}})
    assert status == 200, body
    assert env.store.snapshot(1).settings.parameters["shared_buffers"] == "256MB"


def test_two_bad_values_are_named_on_one_line(env: Env) -> None:
    status, body = env.json("PATCH", "/config", {"parameters": {"max_connections": "lots", "fsync": "x"}})
    assert status == 400 and "\n" not in body["error"]
    assert "parameters.max_connections" in body["error"] and "parameters.fsync" in body["error"]


def server_with(env: Env, specs: Any) -> ApiServer:
    env.server.stop()
    server = ApiServer("127.0.0.1", free_port(), env.holder, env.store, env.commands, "node1",
                       store_timeout=2.0, auth=SERVER_AUTH, setting_specs=specs)
    server.start()
    env.server = server
    return server


def down(timeout: float) -> list[SettingSpec]:
    raise ConnectionRefusedError("connection refused")


@pytest.mark.parametrize("specs", [None, down])
def test_without_a_postgresql_to_ask_parameter_changes_wait_and_others_go_through(env: Env,
                                                                                 specs: Any) -> None:
    server_with(env, specs)
    status, body = env.json("PATCH", "/config", {"parameters": {"work_mem": "8MB"}})
    assert status == 503 and "PostgreSQL" in body["error"]
    assert env.store.snapshot(1).settings == ClusterSettings()
    status, body = env.json("PATCH", "/config", {"ttl": 8})  # no parameter changes: nothing to check
    assert status == 200 and body["ttl"] == 8.0
