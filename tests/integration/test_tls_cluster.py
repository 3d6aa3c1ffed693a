"""A whole cluster under `pgwarden local up --tls` (3 nodes, etcd): the REST API on https only,
PostgreSQL and replication encrypted and verified, clients on verify-full through a switchover
and a crash failover (with the old primary rewound back over TLS), and certificates rotated under
a stream of health checks without one failure."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import struct
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import psycopg
import pytest
import urllib3
from cryptography import x509

from pgwarden.tls.certs import CertFiles, make_ca, make_cert
from pgwarden.tls.contexts import TlsPaths
from pgwarden.tls.http import api_pool
from tests.support.cluster import Cluster
from tests.support.wait import wait_for
from tests.support.writer import Writer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    # Synchronous: a crash failover must then keep every acknowledged commit, over TLS too. With
    # the failsafe on, that failover also needs a majority's votes over https (rule 17).
    with Cluster("tls", tls=True, sync="on", sets=("failsafe=on",)) as cl:
        yield cl


def api_port(cluster: Cluster, node: str) -> int:
    return int(cluster.config(node)["restapi"]["port"])


def test_health_over_https_and_nothing_over_plain_http(cluster: Cluster) -> None:
    primary = cluster.wait_primary()
    replicas = [n for n in cluster.names if n != primary]
    cluster.wait_replicas(replicas)
    for n in cluster.names:
        assert cluster.api(n).startswith("https://127.0.0.1:")
        assert cluster.http("GET", n, "/health", auth=False)[0] == 200
        assert cluster.http("GET", n, "/primary", auth=False)[0] == (200 if n == primary else 503)
    plain = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(total=3))
    with pytest.raises(urllib3.exceptions.ProtocolError):
        plain.request("GET", f"http://127.0.0.1:{api_port(cluster, primary)}/health")
    # The members' own addresses, published for peers, ctl and HAProxy, are https too.
    members = json.loads(cluster.ctl("list", "--format", "json").stdout)
    assert sorted(m["api_url"] for m in members) == sorted(cluster.api(n) for n in cluster.names)


def test_the_store_is_etcd_on_https_with_client_certificates(cluster: Cluster) -> None:
    port = int(cluster.state()["procs"]["etcd"]["ports"]["client"])
    plain = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(total=3))
    with pytest.raises(urllib3.exceptions.ProtocolError):
        plain.request("GET", f"http://127.0.0.1:{port}/health")
    anonymous = api_pool(TlsPaths(None, None, cluster.ca()), retries=False, timeout=urllib3.Timeout(total=3))
    with pytest.raises((urllib3.exceptions.SSLError, urllib3.exceptions.ProtocolError)):
        anonymous.request("GET", f"https://127.0.0.1:{port}/v3/kv/range", body=b'{"key": "AA=="}')
    for n in cluster.names:
        assert cluster.config(n)["store"]["etcd"]["tls"]["certfile"].endswith(f"{n}.crt")
    members = json.loads(cluster.ctl("list", "--format", "json").stdout)  # ctl reads the store on https
    assert sorted(m["name"] for m in members) == cluster.names


def test_a_client_trusting_another_ca_is_refused_by_the_api_and_postgres(cluster: Cluster,
                                                                           tmp_path: Path) -> None:
    primary = cluster.wait_primary()
    other = make_ca(tmp_path / "other")
    http = api_pool(TlsPaths(None, None, other.certfile), retries=False, timeout=urllib3.Timeout(total=3))
    with pytest.raises(urllib3.exceptions.SSLError, match="CERTIFICATE_VERIFY_FAILED"):
        http.request("GET", cluster.api(primary) + "/health")
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        psycopg.connect(cluster.conninfo(primary).replace(str(cluster.ca()), str(other.certfile)))
    with pytest.raises(psycopg.OperationalError, match="no encryption"):
        psycopg.connect(cluster.conninfo(primary).split(" sslmode=")[0] + " sslmode=disable")


def test_replication_is_encrypted_and_the_dsn_verifies(cluster: Cluster) -> None:
    primary = cluster.wait_primary()
    cluster.wait_replicas([n for n in cluster.names if n != primary])
    dsn = cluster.dsn()
    assert "sslmode=verify-full" in dsn and f"sslrootcert={cluster.ca()}" in dsn
    with psycopg.connect(dsn, autocommit=True) as c:
        row = c.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
        assert row == (True,)
    rows = cluster.sql(primary, "SELECT s.ssl FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid)")
    assert rows == [(True,), (True,)]


def test_switchover_and_crash_failover_under_a_verify_full_writer(cluster: Cluster) -> None:
    leader = cluster.wait_primary()
    others = [n for n in cluster.names if n != leader]
    cluster.wait_replicas(others)
    w = Writer(cluster.dsn(), table="tls_acks")
    w.prepare()
    w.start(max_seconds=200)
    try:
        wait_for(lambda: len(w.acks) > 50, 30, "writes flowing")
        # synchronous_mode: on lets only a member of the store's synchronous set take over, and the
        # set can still be empty when the replicas have just begun to stream: wait for it.
        wait_for(partial(sync_members, cluster, leader), 30, "a synchronous standby in the store")
        candidate = sync_members(cluster, leader)[0]
        out = cluster.ctl("switchover", "--leader", leader, "--candidate", candidate, "--force")
        assert candidate in out.stdout
        assert cluster.wait_primary(timeout=30) == candidate
        cluster.wait_replicas([n for n in cluster.names if n != candidate])
        port = str(cluster.config(candidate)["postgresql"]["port"])
        seen = len(w.acks)
        wait_for(lambda: any(a.server.endswith(port) for a in w.acks[seen:]), 30,
                 "writes on the new primary")

        old = candidate
        # Only a member of the store's synchronous set may be promoted (rule 7): crash the new
        # primary once it has one, not in the moments after the switchover when it has none.
        wait_for(partial(sync_members, cluster, old), 30, "a synchronous standby in the store")
        cluster.kill_node(old)
        new = cluster.wait_primary(timeout=60, exclude=(old,))
        port = str(cluster.config(new)["postgresql"]["port"])
        seen = len(w.acks)
        wait_for(lambda: any(a.server.endswith(port) for a in w.acks[seen:]), 30,
                 "writes after the failover")
    finally:
        w.stop()
    assert w.missing_on(cluster.conninfo(new)) == []  # synchronous_mode: on
    cluster.start_node(old)
    cluster.wait_replicas([old], timeout=120)
    assert (cluster.status(old) or {}).get("upstream") == new
    assert cluster.primaries() == [new]


def sync_members(cluster: Cluster, leader: str) -> list[str]:
    body = cluster.http("GET", leader, "/cluster")[1]
    members: list[str] = (body.get("sync") or {}).get("members") or []
    return members


def served_pg_serial(port: int, ca: Path) -> int:
    ctx = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        raw.sendall(struct.pack("!ii", 8, 80877103))
        assert raw.recv(1) == b"S"
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as conn:
            der = conn.getpeercert(binary_form=True)
    assert der is not None
    return int(x509.load_der_x509_certificate(der).serial_number)


def served_api_serial(port: int, ca: Path) -> int:
    ctx = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as conn:
        der = conn.getpeercert(binary_form=True)
    assert der is not None
    return int(x509.load_der_x509_certificate(der).serial_number)


def test_certificates_rotate_under_health_checks_without_a_failure(cluster: Cluster) -> None:
    node = cluster.names[0]
    tls = cluster.config(node)["restapi"]["tls"]
    certfile, keyfile = Path(tls["certfile"]), Path(tls["keyfile"])
    ca = CertFiles(cluster.ca(), cluster.dir / "tls" / "ca.key")
    stop = threading.Event()
    outcomes: list[int | str] = []

    def check() -> None:
        while not stop.is_set():
            try:
                outcomes.append(cluster.http("GET", node, "/health", auth=False)[0])
            except Exception as e:
                outcomes.append(repr(e))

    checker = threading.Thread(target=check)
    checker.start()
    try:
        wait_for(lambda: len(outcomes) >= 10, 15, "health checks before the rotation")
        new = make_cert(ca, cluster.dir / "tls" / "rotated", node, ["127.0.0.1", "localhost"])
        want = int(x509.load_pem_x509_certificate(new.certfile.read_bytes()).serial_number)
        for src, dst in ((new.certfile, certfile), (new.keyfile, keyfile)):  # not atomic as a pair
            tmp = dst.with_name(dst.name + ".new")
            tmp.write_bytes(src.read_bytes())
            os.chmod(tmp, 0o600)
            tmp.replace(dst)
        os.kill(cluster.agent_pid(node), signal.SIGHUP)
        wait_for(lambda: served_api_serial(api_port(cluster, node), ca.certfile) == want, 15,
                 "the API serving the new certificate")
        pg_port = int(cluster.config(node)["postgresql"]["port"])
        wait_for(lambda: served_pg_serial(pg_port, ca.certfile) == want, 15,
                 "PostgreSQL serving the new certificate")
        count = len(outcomes)
        wait_for(lambda: len(outcomes) > count + 20, 15, "more health checks after the rotation")
    finally:
        stop.set()
        checker.join(10)
    assert [o for o in outcomes if o != 200] == []  # before, during and after the rotation
    log = (cluster.dir / node / "agent.log").read_text()
    assert "SIGHUP" in log


def test_node_clone_by_hand_over_tls(cluster: Cluster) -> None:
    """`pgwarden node clone`: its reads of the leader's API (https), its slot on the leader and the
    base backup itself (verify-full) all go over TLS."""
    leader = cluster.wait_primary()
    replica = next(n for n in cluster.names if n != leader)
    cluster.wait_replicas([n for n in cluster.names if n != leader], timeout=120)
    cluster.stop_node(replica)
    res = cluster.node_cmd(replica, "clone")
    assert res.returncode == 0, res.stderr
    assert f"cloned from {leader}" in res.stdout
    cluster.start_node(replica)
    cluster.wait_replicas([replica], timeout=120)
