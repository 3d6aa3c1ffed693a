"""One etcd on loopback as the store of a `pgwarden local` cluster, started before the agents,
and its health probe."""

from __future__ import annotations

from pathlib import Path

import urllib3

from pgwarden.errors import CliError
from pgwarden.local.component import STAGE_STORE, Component
from pgwarden.local.handle import ClusterHandle
from pgwarden.local.layout import LOOPBACK, ProcRecord
from pgwarden.local.store_secrets import PREFIX, STORE_USER, read_secret
from pgwarden.store.base import StoreError
from pgwarden.store.etcd_auth import enable_auth


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
        if not etcd_healthy(record.ports["client"]):
            return False
        # Auth on before any agent starts (idempotent: a restarted cluster's etcd has it on).
        root = read_secret(cluster.directory, "etcd-root.password")
        user = read_secret(cluster.directory, "store.password")
        if root is None or user is None:  # a cluster made before pgwarden enabled etcd auth
            return True
        try:
            enable_auth([f"{LOOPBACK}:{record.ports['client']}"], root, STORE_USER, user, PREFIX, 10.0)
        except StoreError as e:
            raise CliError(f"etcd: {e} (see {record.log})") from None
        return True


def etcd_healthy(client_port: int) -> bool:
    http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(1.0))
    try:
        resp = http.request("GET", f"http://{LOOPBACK}:{client_port}/health")
    except urllib3.exceptions.HTTPError:
        return False
    return resp.status == 200 and b"true" in resp.data
