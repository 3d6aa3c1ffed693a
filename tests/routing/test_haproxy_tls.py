"""HAProxy's health checks against https REST APIs (patroni#3009): the generated `check-ssl` lines,
and a real HAProxy marking a real HTTPS agent API up when it trusts the CA and down when not."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgwarden.api.server import ApiServer
from pgwarden.local.haproxy import server_states
from pgwarden.routing.haproxy import Backend, Listeners, backends_from_view, render
from tests.api.factory import view
from tests.api.https import start_https
from tests.support.ports import free_port
from tests.support.tls import Pki, make_pki
from tests.support.wait import wait_for

HAPROXY = shutil.which("haproxy") or ("/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)
TLS = [Backend("node1", "10.0.0.1", 5432, 8008, api_tls=True)]


def test_https_checks_verify_against_the_ca() -> None:
    text = render(TLS, Listeners(check_ca_file="/etc/pgwarden/ca.crt"))
    line = ("server node1 10.0.0.1:5432 maxconn 500 check port 8008 "
            "check-ssl verify required ca-file /etc/pgwarden/ca.crt")
    assert text.count(line) == 2  # the read-write and the read-only listener


def test_https_checks_without_a_ca_say_so() -> None:
    text = render(TLS, Listeners())
    assert "check port 8008 check-ssl verify none" in text
    assert "# https checks, no CA to verify with" in text
    plain = render([Backend("node1", "10.0.0.1", 5432, 8008)], Listeners(check_ca_file="/ca.crt"))
    assert "check-ssl" not in plain and "ca-file" not in plain


def test_members_with_https_urls_get_tls_checks() -> None:
    from dataclasses import replace

    v = view()
    members = {n: replace(m, api_url=m.api_url.replace("http://", "https://")) for n, m in v.members.items()}
    assert all(b.api_tls for b in backends_from_view(replace(v, members=members)))
    assert not any(b.api_tls for b in backends_from_view(v))


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[ApiServer, Pki]]:
    pki = make_pki(tmp_path)
    server = start_https(pki.server())
    yield server, pki
    server.stop()


def run_haproxy(tmp_path: Path, api_port: int, ca: Path) -> tuple[subprocess.Popen[bytes], Path]:
    assert HAPROXY is not None
    sock = tmp_path / f"admin-{ca.parent.name}.sock"
    cfg = tmp_path / f"haproxy-{ca.parent.name}.cfg"
    cfg.write_text(render([Backend("node1", "127.0.0.1", free_port(), api_port, api_tls=True)],
                          Listeners(primary_port=free_port(), replica_port=None, stats_socket=str(sock),
                                    check_ca_file=str(ca))))
    proc = subprocess.Popen([HAPROXY, "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    return proc, sock


@pytest.mark.skipif(HAPROXY is None, reason="haproxy not installed")
def test_real_haproxy_checks_an_https_api(api: tuple[ApiServer, Pki], tmp_path: Path) -> None:
    server, pki = api
    port = int(server.url.rsplit(":", 1)[1])
    good, good_sock = run_haproxy(tmp_path, port, pki.ca.certfile)
    bad, bad_sock = run_haproxy(tmp_path, port, pki.other_ca.certfile)
    try:
        # HAProxy counts a server up until its checks fail: wait for the verdicts to settle.
        wait_for(lambda: server_states(bad_sock).get(("primary", "node1"), "").startswith("DOWN"), 15,
                 "the check that trusts another CA to fail")
        wait_for(lambda: server_states(good_sock).get(("primary", "node1")) == "UP", 15,
                 "the check that trusts our CA to pass")
        assert server_states(good_sock)[("primary", "node1")] == "UP"
    finally:
        for proc in (good, bad):
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(10)
