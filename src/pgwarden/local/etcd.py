"""One etcd on loopback as the store of a `pgwarden local` cluster, started before the agents,
and its health probe."""

from __future__ import annotations

from pathlib import Path

import urllib3

from pgwarden.local.component import STAGE_STORE, Component
from pgwarden.local.handle import ClusterHandle
from pgwarden.local.layout import LOOPBACK, ProcRecord


class EtcdComponent(Component):
    kind = "etcd"
    stage = STAGE_STORE

    def __init__(self, binary: Path, client_port: int, peer_port: int) -> None:
        self.name = "etcd"
        self.binary = binary
        self.client_port = client_port
        self.peer_port = peer_port

    def plan(self, cluster: ClusterHandle) -> ProcRecord:
        data = cluster.directory / "etcd"
        client = f"http://{LOOPBACK}:{self.client_port}"
        peer = f"http://{LOOPBACK}:{self.peer_port}"
        argv = [
            str(self.binary), "--name", "local", "--data-dir", str(data),
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"local={peer}", "--initial-cluster-state", "new",
        ]
        return ProcRecord(
            name=self.name, kind=self.kind, argv=argv, log=str(cluster.directory / "etcd.log"),
            marker=str(data), ports={"client": self.client_port, "peer": self.peer_port}, stage=self.stage,
        )

    def is_ready(self, cluster: ClusterHandle, record: ProcRecord) -> bool:
        return etcd_healthy(record.ports["client"])


def etcd_healthy(client_port: int) -> bool:
    http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(1.0))
    try:
        resp = http.request("GET", f"http://{LOOPBACK}:{client_port}/health")
    except urllib3.exceptions.HTTPError:
        return False
    return resp.status == 200 and b"true" in resp.data
