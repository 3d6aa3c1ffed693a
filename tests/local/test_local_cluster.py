"""End to end: `pgwarden local up` with real agents, etcd and PostgreSQL, driven through the
console script exactly as a user would, and `local down` leaving nothing behind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from stat import S_IMODE
from typing import Any

import psycopg
import pytest
import urllib3
import yaml

from pgwarden.api.auth import basic_header
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

UP_TIMEOUT = 180


def pgwarden(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pgwarden", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


def status(d: Path) -> list[dict[str, Any]]:
    res = pgwarden("local", "status", "--dir", str(d), "--format", "json")
    assert res.returncode == 0, res.stderr
    members: list[dict[str, Any]] = json.loads(res.stdout)["members"]
    return members


def roles(d: Path) -> list[tuple[str, str]]:
    return sorted((m["role"], m["state"]) for m in status(d))


def processes_under(d: Path) -> list[str]:
    """Command lines of live processes that mention the cluster directory (read-only scan)."""
    found: list[str] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if stat[stat.rfind(")") + 2:].startswith("Z"):
            continue
        cmd = raw.replace(b"\0", b" ").decode(errors="replace")
        if str(d) in cmd:
            found.append(f"{entry.name}: {cmd}")
            continue
        try:  # a postmaster names its data dir only through its working directory
            if os.readlink(entry / "cwd").startswith(str(d)):
                found.append(f"{entry.name} (cwd): {cmd}")
        except OSError:
            pass
    return found


def check_api_protected(d: Path) -> None:
    """Every node file holds the cluster's REST API credentials, readable by its owner only; the
    agents require them for what changes or reveals settings, and not for health checks."""
    files = [d / n / "pgwarden.yaml" for n in ("node1", "node2", "node3")]
    assert {S_IMODE(f.stat().st_mode) for f in files} == {0o600}
    docs = [yaml.safe_load(f.read_text())["restapi"] for f in files]
    creds = {(r["authentication"]["username"], r["authentication"]["password"]) for r in docs}
    assert len(creds) == 1 and len(next(iter(creds))[1]) >= 16  # one generated password for all
    http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(total=10))
    user, password = creds.pop()
    auth = {"Authorization": basic_header(user, password)}
    for r in docs:
        url = f"http://{r['listen_address']}:{r['port']}"
        assert http.request("GET", url + "/health").status == 200
        assert http.request("POST", url + "/restart", body=b"{}").status == 401
        assert http.request("GET", url + "/config").status == 401
        assert http.request("GET", url + "/config", headers=auth).status == 200
    # A parameter value PostgreSQL would refuse is refused by the agent, which asks its server.
    r = http.request("PATCH", url + "/config", headers=auth, json={"parameters": {"max_connections": "lots"}})
    assert r.status == 400, r.data
    assert "parameters.max_connections: 'lots' is refused" in json.loads(r.data)["error"]
    r = http.request("PATCH", url + "/config", headers=auth, json={"parameters": {"work_mem": "16MB"}})
    assert r.status == 200 and json.loads(r.data)["parameters"]["work_mem"] == "16MB", r.data
    # Every member's PostgreSQL roles have passwords of their own, none of them the old defaults.
    pg = [yaml.safe_load(f.read_text())["postgresql"] for f in files]
    for role in ("superuser", "replication"):
        passwords = {p[role]["password"] for p in pg}
        assert len(passwords) == 1 and len(next(iter(passwords))) >= 16


@pytest.fixture
def cluster_dir() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="pgwarden-local-", dir="/tmp"))
    base.chmod(0o755)  # PostgreSQL's OS user must traverse it
    d = base / "demo"
    try:
        yield d
    finally:
        if (d / "state.json").exists():
            pgwarden("local", "down", "--dir", str(d))
        shutil.rmtree(base, ignore_errors=True)


def test_local_cluster_end_to_end(cluster_dir: Path) -> None:
    d = cluster_dir
    up = pgwarden("local", "up", "--nodes", "3", "--dir", str(d), "--timeout", str(UP_TIMEOUT),
                  timeout=UP_TIMEOUT + 30)
    assert up.returncode == 0, f"{up.stdout}\n{up.stderr}"
    assert up.stdout.strip().splitlines()[-1].startswith("postgresql://")
    # Healthy means caught up: right after `up` returns, every replica answers a zero-lag check
    # (a replica not yet streaming, behind the segment switch that ends the next member's base
    # backup, once passed as ready and answered 503 for a second). Asked at once, over HTTP.
    http = urllib3.PoolManager(retries=False, timeout=2.0)
    for node in ("node1", "node2", "node3"):
        api = yaml.safe_load((d / node / "pgwarden.yaml").read_text())["restapi"]
        base = f"http://{api['listen_address']}:{api['port']}"
        if json.loads(http.request("GET", base + "/status").data)["role"] == "replica":
            for path in ("/replica?lag=0", "/readiness"):
                assert http.request("GET", base + path).status == 200, (node, path)
    for node in ("node1", "node2", "node3"):
        assert (d / node / "pgwarden.yaml").is_file()
    assert (d / "etcd.log").is_file() and (d / "state.json").is_file()

    assert roles(d) == [("primary", "running"), ("replica", "running"), ("replica", "running")]
    check_api_protected(d)

    again = pgwarden("local", "up", "--nodes", "3", "--dir", str(d))
    assert again.returncode == 1 and "already holds a running cluster" in again.stderr

    dsn = pgwarden("local", "dsn", "--dir", str(d))
    assert dsn.returncode == 0, dsn.stderr
    conninfo = dsn.stdout.strip().splitlines()[-1]
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (x int)")
        conn.execute("INSERT INTO t VALUES (1)")
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (1,)

    replica = next(m["name"] for m in status(d) if m["role"] == "replica")
    stop = pgwarden("local", "stop", "--dir", str(d), replica)
    assert stop.returncode == 0, stop.stderr
    wait_for(lambda: next(m for m in status(d) if m["name"] == replica)["state"] == "stopped", 30,
             f"{replica} to show as stopped")
    with psycopg.connect(conninfo, autocommit=True) as conn:  # the primary keeps serving
        conn.execute("INSERT INTO t VALUES (2)")

    start = pgwarden("local", "start", "--dir", str(d), replica)
    assert start.returncode == 0, start.stderr
    wait_for(lambda: roles(d) == [("primary", "running"), ("replica", "running"), ("replica", "running")],
             120, f"{replica} to rejoin as a running replica")

    down = pgwarden("local", "down", "--dir", str(d))
    assert down.returncode == 0, down.stderr
    wait_for(lambda: not processes_under(d), 30, "no process of the cluster left")
    assert {m["state"] for m in status(d)} == {"stopped"}
