"""core/parameters.py agrees with PostgreSQL's own parser: for values of parameters a session may
set, our verdict from the server's pg_settings matches whether `set_config` takes the value."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from pgwarden.config.schema import NodeConfig
from pgwarden.core.parameters import SettingSpec, parameter_errors
from tests.support.pg import NEEDS_POSTGRES, bootstrapped_primary, connect, make_node_config, teardown
from tests.support.ports import free_port

pytestmark = [
    pytest.mark.integration,
    NEEDS_POSTGRES,
]

VALUES = ["0", "1", "-1", "100", "1.5", "0x10", "010", "1e3", "lots", "", " 7 ", "on", "OFF", "of", "o",
          "t", "yes", "2", "8MB", "8 MB", "8mb", "64kB", "1GB", "1TB", "100B", "10s", "10 min", "1h", "1d",
          "500us", "1.5s", "10ms", "3 parsecs", "local", "remote_apply", "notice", "NOTICE", "warning",
          "nan", "inf", "99999999999999999999", "debug", "info", "debug1", "log", "fatal", "panic"]
PARAMETERS = ["work_mem", "statement_timeout", "lock_timeout", "random_page_cost", "enable_seqscan",
              "synchronous_commit", "client_min_messages", "vacuum_cost_delay", "temp_file_limit",
              "extra_float_digits", "jit_above_cost", "idle_session_timeout", "cursor_tuple_fraction",
              "log_min_messages", "log_min_error_statement", "icu_validation_level", "bytea_output",
              "default_transaction_isolation", "session_replication_role", "backslash_quote",
              "constraint_exclusion", "xmloption", "track_functions"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeConfig]:
    cfg = make_node_config(tmp_path_factory.mktemp("specs"), "n1", free_port(), free_port())
    ctl = bootstrapped_primary(cfg)
    try:
        yield cfg
    finally:
        teardown(ctl)


def takes(conn: psycopg.Connection[object], name: str, value: str) -> bool:
    try:
        with conn.transaction(force_rollback=True):
            conn.execute("SELECT set_config(%s, %s, true)", (name, value))
        return True
    except psycopg.errors.DataError:
        return False
    except psycopg.Error as e:
        if e.sqlstate in ("22023", "22P02", "22003"):  # invalid parameter value / text / out of range
            return False
        raise


def test_our_verdicts_match_postgresqls(server: NodeConfig) -> None:
    with connect(server) as conn:
        conn.autocommit = True
        rows = conn.execute("SELECT name, vartype, unit, min_val, max_val, coalesce(enumvals, '{}') "
                            "FROM pg_settings").fetchall()
        specs = [SettingSpec(n, t, u, lo, hi, tuple(e)) for n, t, u, lo, hi, e in rows]
        disagree = []
        for name in PARAMETERS:
            for value in VALUES:
                ours = not parameter_errors(specs, {name: value})
                theirs = takes(conn, name, value)
                if ours != theirs:
                    disagree.append(f"{name}={value!r}: we say {ours}, PostgreSQL says {theirs}")
    assert not disagree, "\n".join(disagree)
