"""The generated HAProxy configuration: its rules as text, and the real haproxy accepting it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from pgwarden.routing.haproxy import Backend, Listeners, api_port, render

BACKENDS = [Backend("node1", "10.0.0.1", 5432, 8008), Backend("node2", "10.0.0.2", 5433, 8009)]


def test_primary_listener_checks_primary_and_shuts_sessions_to_a_down_server() -> None:
    text = render(BACKENDS, Listeners(bind="0.0.0.0", primary_port=6000, replica_port=None))
    primary = text.split("listen primary", 1)[1]
    assert "bind 0.0.0.0:6000" in primary
    assert "option httpchk OPTIONS /primary" in primary
    assert "http-check expect status 200" in primary
    assert "inter 1s" in primary and "fall 2" in primary and "rise 1" in primary
    assert "on-marked-down shutdown-sessions" in primary
    assert "server node1 10.0.0.1:5432 maxconn 500 check port 8008" in primary
    assert "server node2 10.0.0.2:5433 maxconn 500 check port 8009" in primary
    assert "listen replicas" not in text


def test_replica_listener_balances_over_replica_checks_with_a_lag_bound() -> None:
    text = render(BACKENDS, Listeners(replica_port=6001, max_lag="16MB", balance="leastconn"))
    replicas = text.split("listen replicas", 1)[1]
    assert "balance leastconn" in replicas
    assert "option httpchk OPTIONS /replica?lag=16MB" in replicas
    assert "bind 127.0.0.1:6001" in replicas
    plain = render(BACKENDS, Listeners())
    assert "option httpchk OPTIONS /replica\n" in plain


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="balance"):
        render(BACKENDS, Listeners(balance="random"))
    with pytest.raises(ValueError, match="no members"):
        render([], Listeners())


def test_api_port_from_url() -> None:
    assert api_port("http://127.0.0.1:8010") == 8010
    assert api_port("http://db1") == 80
    assert api_port("https://db1") == 443


@pytest.mark.skipif(shutil.which("haproxy") is None and not Path("/usr/sbin/haproxy").exists(),
                    reason="haproxy not installed")
def test_real_haproxy_accepts_the_config(tmp_path: Path) -> None:
    binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
    for lst in (Listeners(), Listeners(stats_port=7000, max_lag="1048576"),
                Listeners(replica_port=None, stats_socket=str(tmp_path / "admin.sock"))):
        cfg = tmp_path / "haproxy.cfg"
        cfg.write_text(render(BACKENDS, lst, "demo"))
        res = subprocess.run([binary, "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30)
        assert res.returncode == 0, res.stderr
