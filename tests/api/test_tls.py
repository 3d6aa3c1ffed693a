"""The REST API over HTTPS on real loopback sockets: verification of the server (CA and host name)
and of clients (verify_client), plain HTTP refused, a silent client not holding up anyone else, and
certificates rotated under a stream of health checks without one failure."""

from __future__ import annotations

import shutil
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from functools import partial
from pathlib import Path

import pytest
import urllib3

from pgwarden.agent.peers import PeerProbe
from pgwarden.api.server import ApiServer
from pgwarden.core.model import Role
from pgwarden.tls.certs import make_cert
from pgwarden.tls.contexts import ContextSource, TlsPaths, client_context, server_context
from pgwarden.tls.http import api_pool
from tests.support.tls import LOOPBACK_HOSTS, Pki, make_pki
from tests.support.wait import wait_for

from .factory import CAUGHT_UP
from .https import start_https


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)


start = start_https


@pytest.fixture
def servers() -> Iterator[list[ApiServer]]:
    started: list[ApiServer] = []
    yield started
    for s in started:
        s.stop()


def get(server: ApiServer, client: TlsPaths | None, path: str = "/health") -> int:
    http = api_pool(client, retries=False, timeout=urllib3.Timeout(total=5))
    return http.request("GET", server.url + path).status


def test_https_with_the_ca_and_host_name_verified(pki: Pki, servers: list[ApiServer]) -> None:
    server = start(pki.server())
    servers.append(server)
    assert server.url.startswith("https://127.0.0.1:")
    assert get(server, pki.client(with_cert=False)) == 200
    assert get(server, pki.client(with_cert=False), "/status") == 200


def test_a_client_trusting_another_ca_fails_verification(pki: Pki, servers: list[ApiServer]) -> None:
    server = start(pki.server())
    servers.append(server)
    with pytest.raises(urllib3.exceptions.SSLError, match="CERTIFICATE_VERIFY_FAILED"):
        get(server, TlsPaths(None, None, pki.other_ca.certfile))


def test_a_certificate_for_another_host_name_is_refused(pki: Pki, tmp_path: Path,
                                                        servers: list[ApiServer]) -> None:
    elsewhere = make_cert(pki.ca, tmp_path / "elsewhere", "db9", ["db9.example.com", "10.9.9.9"])
    server = start(TlsPaths(elsewhere.certfile, elsewhere.keyfile, pki.ca.certfile))
    servers.append(server)
    with pytest.raises(urllib3.exceptions.SSLError, match=r"match|mismatch"):
        get(server, pki.client())


def test_plain_http_gets_no_answer(pki: Pki, servers: list[ApiServer]) -> None:
    server = start(pki.server())
    servers.append(server)
    http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(total=5))
    with pytest.raises(urllib3.exceptions.ProtocolError):
        http.request("GET", server.url.replace("https://", "http://") + "/health")
    assert get(server, pki.client()) == 200  # and the server still serves


def test_verify_client_required(pki: Pki, servers: list[ApiServer]) -> None:
    server = start(pki.server("required"))
    servers.append(server)
    assert get(server, pki.client()) == 200
    for client in (pki.client(with_cert=False),
                   TlsPaths(pki.stranger.certfile, pki.stranger.keyfile, pki.ca.certfile)):
        with pytest.raises((urllib3.exceptions.SSLError, urllib3.exceptions.ProtocolError)):
            get(server, client)


def test_verify_client_optional(pki: Pki, servers: list[ApiServer]) -> None:
    server = start(pki.server("optional"))
    servers.append(server)
    assert get(server, pki.client()) == 200
    assert get(server, pki.client(with_cert=False)) == 200
    with pytest.raises((urllib3.exceptions.SSLError, urllib3.exceptions.ProtocolError)):
        get(server, TlsPaths(pki.stranger.certfile, pki.stranger.keyfile, pki.ca.certfile))


def test_a_silent_client_does_not_hold_up_the_handshakes_of_others(pki: Pki,
                                                                    servers: list[ApiServer]) -> None:
    server = start(pki.server())
    servers.append(server)
    port = int(server.url.rsplit(":", 1)[1])
    silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(5)]
    try:
        t0 = time.monotonic()
        assert get(server, pki.client()) == 200
        assert time.monotonic() - t0 < 2.0  # not the 10 s handshake deadline of the silent ones
    finally:
        for s in silent:
            s.close()


def served_serial(server: ApiServer, ca: Path) -> int:
    ctx = ssl.create_default_context(cafile=str(ca))
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        der = tls.getpeercert(binary_form=True)
    from cryptography import x509
    assert der is not None
    return int(x509.load_der_x509_certificate(der).serial_number)


def serving(server: ApiServer, ca: Path, serial: int) -> bool:
    return served_serial(server, ca) == serial


def cert_serial(path: Path) -> int:
    from cryptography import x509
    return int(x509.load_pem_x509_certificate(path.read_bytes()).serial_number)


def test_rotation_under_health_checks_fails_no_request(pki: Pki, tmp_path: Path,
                                                       servers: list[ApiServer]) -> None:
    """Certificates replaced five times, each time certificate first and key a moment later (the
    half-way state must not be served), while four clients check health without pause: every
    request succeeds, new connections get the new certificate."""
    live = tmp_path / "live"
    live.mkdir()
    shutil.copy(pki.node.certfile, live / "api.crt")
    shutil.copy(pki.node.keyfile, live / "api.key")
    paths = TlsPaths(live / "api.crt", live / "api.key", pki.ca.certfile)
    server = start(paths, interval=0.05)
    servers.append(server)
    stop = threading.Event()
    results: list[int | str] = []
    lock = threading.Lock()

    def checker() -> None:
        ctx = client_context(pki.client(with_cert=False))
        while not stop.is_set():
            # a fresh connection each time, so each handshake meets the current certificate
            http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(total=5), ssl_context=ctx)
            try:
                outcome: int | str = http.request("GET", server.url + "/health").status
            except Exception as e:
                outcome = repr(e)
            finally:
                http.clear()
            with lock:
                results.append(outcome)

    def checked(count: int) -> bool:
        return len(results) >= count

    threads = [threading.Thread(target=checker) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for i in range(5):
            new = make_cert(pki.ca, tmp_path / f"gen{i}", "node1", LOOPBACK_HOSTS)
            shutil.copy(new.certfile, live / "api.crt.new")
            (live / "api.crt.new").replace(live / "api.crt")
            # the half-way state (new certificate, old key) lasts a while; it must not be served
            target = len(results) + 20
            wait_for(partial(checked, target), 20, "health checks during the half-way state")
            shutil.copy(new.keyfile, live / "api.key.new")
            (live / "api.key.new").replace(live / "api.key")
            want = cert_serial(new.certfile)
            wait_for(partial(serving, server, pki.ca.certfile, want), 10,
                     f"the server to serve rotation {i}'s certificate")
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    failures = [r for r in results if r != 200]
    assert len(results) > 100
    assert failures == []


def test_sighup_reload_loads_changed_files_at_once(pki: Pki, tmp_path: Path) -> None:
    live = tmp_path / "live"
    live.mkdir()
    shutil.copy(pki.node.certfile, live / "api.crt")
    shutil.copy(pki.node.keyfile, live / "api.key")
    source = ContextSource(TlsPaths(live / "api.crt", live / "api.key", None), server_context,
                           interval=3600)
    first = source.get()
    new = make_cert(pki.ca, tmp_path / "new", "node1", LOOPBACK_HOSTS)
    shutil.copy(new.certfile, live / "api.crt")
    shutil.copy(new.keyfile, live / "api.key")
    assert source.get() is first  # not checked again for an hour
    source.reload()
    assert source.get() is not first and source.generation == 2


def test_peers_read_position_over_https_with_their_certificate(pki: Pki,
                                                                servers: list[ApiServer]) -> None:
    server = start(pki.server("required"))
    servers.append(server)
    peer = replace(CAUGHT_UP, api_url=server.url)
    probe = PeerProbe(ContextSource(pki.client(), client_context))
    try:
        reading = probe.read([peer], timeout=5)[peer.name]
    finally:
        probe.close()
    assert reading.reachable and reading.role is Role.REPLICA and reading.timeline == 3
    anonymous = PeerProbe(ContextSource(pki.client(with_cert=False), client_context))
    try:
        assert not anonymous.read([peer], timeout=5)[peer.name].reachable
    finally:
        anonymous.close()
