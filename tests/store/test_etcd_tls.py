"""etcd over https with client certificates (store.etcd.tls) against a real etcd that requires
them: reads, CAS writes, leases and the watch work; a client without a certificate, or trusting
another CA, gets StoreUnavailable, never a wrong answer."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import urllib3

from pgwarden.config.errors import ConfigError
from pgwarden.config.load import parse_node_config
from pgwarden.core.model import FailoverRequest, MemberInfo
from pgwarden.store.base import StoreUnavailable
from pgwarden.store.cluster import ClusterStore
from pgwarden.store.factory import open_store
from pgwarden.tls.certs import make_cert
from pgwarden.tls.contexts import TlsPaths
from pgwarden.tls.http import api_pool
from tests.support.etcd import EtcdServer
from tests.support.tls import LOOPBACK_HOSTS, Pki, make_pki

pytestmark = pytest.mark.integration

T = 2.0


class TlsEtcd(EtcdServer):
    """etcd serving https only, requiring a client certificate signed by the CA."""

    def __init__(self, base: Path, pki: Pki) -> None:
        super().__init__(base)
        self.pki = pki
        self.cert = make_cert(pki.ca, base / "etcd-cert", "etcd", LOOPBACK_HOSTS)

    def command(self) -> list[str]:
        argv = super().command()
        client = f"https://127.0.0.1:{self.client_port}"
        for flag in ("--listen-client-urls", "--advertise-client-urls"):
            argv[argv.index(flag) + 1] = client
        return [*argv, "--cert-file", str(self.cert.certfile), "--key-file", str(self.cert.keyfile),
                "--client-cert-auth", "--trusted-ca-file", str(self.pki.ca.certfile)]

    def healthy(self) -> bool:
        http = api_pool(self.pki.client(), retries=False, timeout=urllib3.Timeout(total=1.0))
        try:
            resp = http.request("GET", f"https://{self.endpoint}/health")
            return bool(resp.status == 200 and json.loads(resp.data).get("health") == "true")
        except (urllib3.exceptions.HTTPError, OSError, ValueError):
            return False


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)


@pytest.fixture
def etcd(tmp_path: Path, pki: Pki) -> Iterator[TlsEtcd]:
    server = TlsEtcd(tmp_path, pki)
    with server:
        yield server


@pytest.fixture
def stores() -> Iterator[list[ClusterStore]]:
    made: list[ClusterStore] = []
    yield made
    for s in made:
        s.close()


# Node files must name PostgreSQL credentials; these tests are about the store only.
PG = {"superuser": {"username": "postgres", "password": "superuser-pw"},
      "replication": {"username": "replicator", "password": "replication-pw"}}


def store(stores: list[ClusterStore], etcd: TlsEtcd, tls: dict[str, str]) -> ClusterStore:
    cfg = parse_node_config({"cluster": "c", "name": "n1", "data_dir": "/tmp/x", "postgresql": PG,
                             "store": {"etcd": {"hosts": [etcd.endpoint], "tls": tls}}})
    assert cfg.store.etcd is not None and cfg.store.etcd.tls is not None
    s = open_store(cfg.store, "c")
    stores.append(s)
    return s


def files(paths: TlsPaths) -> dict[str, str]:
    return {k: str(v) for k, v in (("cafile", paths.cafile), ("certfile", paths.certfile),
                                    ("keyfile", paths.keyfile)) if v is not None}


def member(name: str) -> MemberInfo:
    return MemberInfo(name=name, api_url="https://127.0.0.1:1", host="127.0.0.1", port=5432)


def test_the_store_works_over_https_with_a_client_certificate(etcd: TlsEtcd, pki: Pki,
                                                              stores: list[ClusterStore]) -> None:
    a, b = store(stores, etcd, files(pki.client())), store(stores, etcd, files(pki.client()))
    assert a.acquire_leader("n1", 10, T)
    assert not b.acquire_leader("n2", 10, T)
    a.publish_member(member("n1"), 10, T)
    view = b.snapshot(T)
    assert view.leader is not None and view.leader.name == "n1" and set(view.members) == {"n1"}
    assert a.renew_leader("n1", 10, T)
    assert a.set_failover(FailoverRequest("failover", None, "n1", None), None, T)
    assert b.wait_for_change(10), "the watch over https did not see the change"


def test_no_client_certificate_or_another_ca_is_unavailable(etcd: TlsEtcd, pki: Pki,
                                                            stores: list[ClusterStore]) -> None:
    for tls in (files(pki.client(with_cert=False)),
                files(TlsPaths(pki.node.certfile, pki.node.keyfile, pki.other_ca.certfile)),
                files(TlsPaths(pki.stranger.certfile, pki.stranger.keyfile, pki.ca.certfile))):
        with pytest.raises(StoreUnavailable):
            store(stores, etcd, tls).snapshot(1.0)


def test_bad_client_tls_is_one_line_at_load() -> None:
    with pytest.raises(ConfigError, match=r"store\.etcd\.tls.*certfile and keyfile together"):
        parse_node_config({"cluster": "c", "name": "n1", "data_dir": "/tmp/x",
                           "store": {"etcd": {"hosts": ["127.0.0.1:2379"],
                                              "tls": {"certfile": "/nope.crt"}}}})
    with pytest.raises(ConfigError, match=r"cafile /nope\.crt does not exist"):
        parse_node_config({"cluster": "c", "name": "n1", "data_dir": "/tmp/x",
                           "store": {"etcd": {"hosts": ["127.0.0.1:2379"], "tls": {"cafile": "/nope.crt"}}}})
