"""Parameters that run commands or load code cannot be set through the cluster settings over the
REST API (PATCH and PUT /config, both shapes, any case): a 400 that names the parameter and the node
file key to use, and the store unchanged. Names and values that would change postgresql.conf's
syntax are refused the same way."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from pgwarden.config.schema import ClusterSettings
from pgwarden.core.settings import NODE_ONLY_PARAMETERS

from .env import Env, make_env

DANGEROUS = sorted({*NODE_ONLY_PARAMETERS, "archive_command", "restore_command", "archive_cleanup_command",
                    "recovery_end_command", "ssl_passphrase_command", "shared_preload_libraries",
                    "local_preload_libraries", "session_preload_libraries", "dynamic_library_path",
                    "my_ext.notify_command", "ARCHIVE_Command"})


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    e = make_env()
    yield e
    e.server.stop()


def refused(env: Env, method: str, body: dict[str, Any]) -> str:
    before = env.store.snapshot(1).settings
    status, answer = env.json(method, "/config", body)
    assert status == 400, (method, body, status, answer)
    assert env.store.snapshot(1).settings == before
    error: str = answer["error"]
    return error


@pytest.mark.parametrize("name", DANGEROUS)
def test_node_only_parameters_are_refused(env: Env, name: str) -> None:
    attempts: list[tuple[str, dict[str, Any]]] = [
        ("PATCH", {"parameters": {name: "x"}}),
        ("PATCH", {"postgresql": {"parameters": {name: "x"}}, "ttl": 6}),
        ("PUT", {"parameters": {"work_mem": "8MB", name: "x"}})]
    for method, body in attempts:
        error = refused(env, method, body)
        assert f"parameters.{name} runs a command or loads code" in error
        assert "set it in each node's own file under postgresql.parameters" in error


def test_other_parameters_still_pass_and_removing_is_fine(env: Env) -> None:
    status, body = env.json("PATCH", "/config", {"parameters": {"work_mem": "8MB", "archive_mode": "on",
                                                                "archive_timeout": 60}})
    assert status == 200 and body["parameters"]["archive_mode"] == "on"
    status, body = env.json("PATCH", "/config", {"parameters": {"archive_command": None}})
    assert status == 200 and "archive_command" not in body["parameters"]
    status, _ = env.json("PUT", "/config", {})
    assert status == 200 and env.store.snapshot(1).settings == ClusterSettings()


@pytest.mark.parametrize(("params", "message"), [
    ({"work_mem = '1MB'\narchive_command": "x"}, "is not a PostgreSQL parameter name"),
    ({"work mem": "1MB"}, "is not a PostgreSQL parameter name"),
    ({"a.b.c": "1"}, "is not a PostgreSQL parameter name"),
    ({"": "1"}, "is not a PostgreSQL parameter name"),
    ({"work_mem": "1MB'\narchive_command = 'x"}, "parameters.work_mem: a value cannot contain a line break"),
    ({"work_mem": "1MB\r"}, "a value cannot contain a line break"),
    ({"work_mem": "1MB\x00"}, "a value cannot contain a line break or NUL"),
])
def test_what_would_break_postgresql_conf_is_refused(env: Env, params: dict[str, Any], message: str) -> None:
    assert message in refused(env, "PATCH", {"parameters": params})
