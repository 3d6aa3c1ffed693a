"""Parameter values checked against pg_settings rows, as PostgreSQL itself would parse them."""

from __future__ import annotations

import pytest

from pgwarden.core.parameters import SettingSpec, changed_parameters, parameter_errors, parse_bool
from pgwarden.core.settings import ParamValue

SPECS = [
    SettingSpec("max_connections", "integer", None, "1", "262143"),
    SettingSpec("shared_buffers", "integer", "8kB", "16", "1073741823"),
    SettingSpec("statement_timeout", "integer", "ms", "0", "2147483647"),
    SettingSpec("checkpoint_timeout", "integer", "s", "30", "86400"),
    SettingSpec("checkpoint_completion_target", "real", None, "0", "1"),
    SettingSpec("vacuum_cost_delay", "real", "ms", "0", "100"),
    SettingSpec("fsync", "bool"),
    SettingSpec("wal_level", "enum", None, None, None, ("minimal", "replica", "logical")),
    SettingSpec("synchronous_commit", "enum", None, None, None,
                ("local", "remote_write", "remote_apply", "on", "off")),
    SettingSpec("log_line_prefix", "string"),
]


def errors(**proposed: ParamValue) -> list[str]:
    return parameter_errors(SPECS, proposed)


@pytest.mark.parametrize(("name", "value"), [
    ("max_connections", 100), ("max_connections", "100"), ("max_connections", " 0x64 "),
    ("max_connections", "1.4"), ("max_connections", 262143),
    ("shared_buffers", "128MB"), ("shared_buffers", 16384), ("shared_buffers", "1GB"),
    ("shared_buffers", "128kB"),
    ("statement_timeout", "5min"), ("statement_timeout", "1.5s"), ("statement_timeout", 0),
    ("checkpoint_timeout", "1h"), ("checkpoint_timeout", "30000ms"),
    ("checkpoint_completion_target", 0.9), ("checkpoint_completion_target", "1"),
    ("vacuum_cost_delay", "2ms"), ("vacuum_cost_delay", "500us"),
    ("fsync", True), ("fsync", "off"), ("fsync", "of"), ("fsync", "TRUE"), ("fsync", "y"), ("fsync", 1),
    ("wal_level", "logical"), ("wal_level", "REPLICA"), ("wal_level", "hot_standby"),
    ("synchronous_commit", "remote_apply"), ("synchronous_commit", True), ("synchronous_commit", "yes"),
    ("log_line_prefix", "%m [%p] "),
    ("my_ext.setting", "anything"),
])
def test_values_postgresql_takes_pass(name: str, value: ParamValue) -> None:
    assert parameter_errors(SPECS, {name: value}) == []


@pytest.mark.parametrize(("name", "value", "why"), [
    ("max_connections", "lots", "'lots' is refused: expected a number without a unit"),
    ("max_connections", 0, "0 is outside the range 1 .. 262143"),
    ("max_connections", 1_000_000, "1000000 is outside the range 1 .. 262143"),
    ("max_connections", True, "expected a number without a unit, got a boolean"),
    ("max_connections", "10MB", "this parameter takes no unit, got 'MB'"),
    ("shared_buffers", "100kB", "12 is outside the range 16 .. 1073741823 (in units of 8kB)"),
    ("shared_buffers", "1 ms", "unknown unit 'ms' (valid: B, kB, MB, GB, TB)"),
    ("shared_buffers", "128mb", "unknown unit 'mb'"),
    ("statement_timeout", "-1", "-1 is outside the range 0 .. 2147483647 (in units of ms)"),
    ("checkpoint_timeout", "10s", "10 is outside the range 30 .. 86400 (in units of s)"),
    ("checkpoint_completion_target", 1.5, "1.5 is outside the range 0 .. 1"),
    ("checkpoint_completion_target", "nan", "expected a number without a unit"),
    ("fsync", "maybe", "expected a boolean"),
    ("fsync", "o", "expected a boolean"),
    ("fsync", 2, "expected a boolean"),
    ("wal_level", "physical", "expected one of minimal, replica, logical"),
    ("wal_level", True, "expected one of minimal, replica, logical"),
    ("synchronous_commit", "sometimes", "expected one of local, remote_write, remote_apply, on, off"),
    ("max_conections", 100, "PostgreSQL has no parameter 'max_conections'"),
])
def test_values_postgresql_refuses_are_named_with_what_is_allowed(name: str, value: ParamValue,
                                                                  why: str) -> None:
    (line,) = parameter_errors(SPECS, {name: value})
    assert line.startswith(f"parameters.{name}: ") and why in line


def test_every_bad_value_gets_its_own_line() -> None:
    assert len(errors(max_connections="lots", fsync="maybe", wal_level="logical")) == 2


def test_names_are_matched_case_insensitively_like_postgresql() -> None:
    assert errors(Max_Connections="lots") == [
        "parameters.Max_Connections: 'lots' is refused: expected a number without a unit"]


def test_parse_bool_follows_postgresql() -> None:
    assert [parse_bool(w) for w in ("t", "ye", "on", "of", "0", "1")] == [True, True, True, False, False,
                                                                          True]
    assert [parse_bool(w) for w in ("o", "", "2", "tru e", "onn")] == [None] * 5


def test_only_added_or_changed_parameters_are_checked() -> None:
    before: dict[str, ParamValue] = {"a": 1, "b": "x", "c": True}
    after: dict[str, ParamValue] = {"a": 1, "b": "y", "d": 2}
    assert changed_parameters(before, after) == {"b": "y", "d": 2}
