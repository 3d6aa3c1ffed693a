"""One etcd on loopback as the store of a `pgwarden local` cluster, started before the agents,
and its health probe. With `local up --tls` it serves https only and requires client certificates
from the cluster's CA (DIR/tls), its own certificate made from that CA too."""

from __future__ import annotations

from pathlib import Path

import urllib3

from pgwarden.errors import CliError
from pgwarden.local.component import STAGE_STORE, Component
from pgwarden.local.handle import ClusterHandle
from pgwarden.local.layout import LOOPBACK, TLS_DIR, ProcRecord
from pgwarden.local.store_secrets import PREFIX, STORE_USER, read_secret
from pgwarden.store.base import StoreError
from pgwarden.store.etcd_auth import enable_auth
from pgwarden.tls.contexts import TlsPaths
from pgwarden.tls.http import api_pool


class EtcdComponent(Component):
    kind = "etcd"
    stage = STAGE_STORE

    def __init__(self, binary: Path, client_port: int, peer_port: int, tls: bool = False) -> None:
        self.name = "etcd"
        self.binary = binary
        self.client_port = client_port
        self.peer_port = peer_port
        self.tls = tls

    def plan(self, cluster: ClusterHandle) -> ProcRecord:
        data = cluster.directory / "etcd"
        client = f"{'https' if self.tls else 'http'}://{LOOPBACK}:{self.client_port}"
        peer = f"http://{LOOPBACK}:{self.peer_port}"  # one member: no peer traffic leaves it
        argv = [
            str(self.binary), "--name", "local", "--data-dir", str(data),
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"local={peer}", "--initial-cluster-state", "new",
        ]
        if self.tls:
            from pgwarden.tls.certs import CertFiles, make_cert

            tdir = cluster.directory / TLS_DIR
            ca = CertFiles(tdir / "ca.crt", tdir / "ca.key")
            cert = make_cert(ca, tdir, "etcd", [LOOPBACK, "localhost"])
            argv += ["--cert-file", str(cert.certfile), "--key-file", str(cert.keyfile),
                     "--client-cert-auth", "--trusted-ca-file", str(tdir / "ca.crt")]
        return ProcRecord(
            name=self.name, kind=self.kind, argv=argv, log=str(cluster.directory / "etcd.log"),
            marker=str(data), ports={"client": self.client_port, "peer": self.peer_port}, stage=self.stage,
        )

    def is_ready(self, cluster: ClusterHandle, record: ProcRecord) -> bool:
        if not etcd_healthy(record.ports["client"], _client_tls(record.argv)):
            return False
        # Auth on before any agent starts (idempotent: a restarted cluster's etcd has it on).
        root = read_secret(cluster.directory, "etcd-root.password")
        user = read_secret(cluster.directory, "store.password")
        tls = _client_tls(record.argv)
        # Before pgwarden enabled etcd auth; or on TLS, where client certificates authenticate
        # (etcd's gateway refuses a certificate and a user's token together).
        if root is None or user is None or tls is not None:
            return True
        try:
            enable_auth([f"{LOOPBACK}:{record.ports['client']}"], root, STORE_USER, user, PREFIX, 10.0)
        except StoreError as e:
            raise CliError(f"etcd: {e} (see {record.log})") from None
        return True


def etcd_answers(record: ProcRecord) -> bool:
    """The local etcd `record` started answers its health check (for `local status`)."""
    return etcd_healthy(record.ports["client"], _client_tls(record.argv))


def _client_tls(argv: list[str]) -> TlsPaths | None:
    """What a health probe of the etcd started with `argv` presents: its own certificate (a client
    certificate of the cluster's CA, which --client-cert-auth asks for), None for plain http."""
    if "--trusted-ca-file" not in argv:
        return None

    def arg(flag: str) -> Path:
        return Path(argv[argv.index(flag) + 1])

    return TlsPaths(arg("--cert-file"), arg("--key-file"), arg("--trusted-ca-file"))


def etcd_healthy(client_port: int, tls: TlsPaths | None = None) -> bool:
    http = api_pool(tls, retries=False, timeout=urllib3.Timeout(1.0))
    try:
        resp = http.request("GET", f"{'https' if tls else 'http'}://{LOOPBACK}:{client_port}/health")
    except urllib3.exceptions.HTTPError:
        return False
    return resp.status == 200 and b"true" in resp.data
