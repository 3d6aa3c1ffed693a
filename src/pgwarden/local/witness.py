"""The raft witness of a `pgwarden local --store raft --witness` cluster: its component and the
witness file it runs from."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import urllib3

from pgwarden.config.validate import validate
from pgwarden.config.witness import WitnessConfig
from pgwarden.errors import CliError
from pgwarden.local.component import STAGE_AGENTS, Component
from pgwarden.local.handle import WITNESS, ClusterHandle
from pgwarden.local.layout import LOOPBACK, ProcRecord, write_node_config


class WitnessComponent(Component):
    """`pgwarden witness`: a raft member with no PostgreSQL, started with the agents (the raft
    group needs a majority of its voters up before anything can be written)."""

    kind = WITNESS
    stage = STAGE_AGENTS

    def __init__(self, doc: dict[str, Any], api_port: int) -> None:
        self.name = WITNESS
        self.doc = doc
        self.api_port = api_port

    def plan(self, cluster: ClusterHandle) -> ProcRecord:
        wdir = cluster.directory / self.name
        config = wdir / "pgwarden.yaml"
        write_node_config(config, self.doc)
        raft_port = int(str(self.doc["store"]["raft"]["self_addr"]).rpartition(":")[2])
        return ProcRecord(
            name=self.name, kind=self.kind,
            argv=[sys.executable, "-m", "pgwarden", "witness", "-c", str(config)],
            log=str(wdir / "witness.log"), marker=str(config), config=str(config),
            ports={"raft": raft_port, "restapi": self.api_port}, stage=self.stage,
        )

    def is_ready(self, cluster: ClusterHandle, record: ProcRecord) -> bool:
        http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(1.0))
        try:
            resp = http.request("GET", f"http://{LOOPBACK}:{record.ports['restapi']}/health")
        except urllib3.exceptions.HTTPError:
            return False
        return resp.status == 200


def witness_config(directory: Path, cluster: str, raft: dict[str, Any], api_port: int) -> dict[str, Any]:
    """The witness' YAML document (validated by the loader `pgwarden witness` uses)."""
    wdir = directory / WITNESS
    doc: dict[str, Any] = {
        "cluster": cluster, "name": WITNESS, "store": {"raft": raft},
        "restapi": {"listen_address": LOOPBACK, "port": api_port},
        "log": {"file": str(wdir / "witness.log")},
    }
    try:
        validate(WitnessConfig, doc, "witness config")
    except ValueError as e:
        raise CliError(f"generated an invalid witness file (a bug): {e}") from None
    return doc
