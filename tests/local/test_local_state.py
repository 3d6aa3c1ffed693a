"""`pgwarden local` state handling with a real etcd but no agents: an extra component (a sleeper)
stands in for what `up` starts after the agents, and fake agent processes (sleepers whose command
line names their node file) for the agents themselves."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgwarden.core.model import Role
from pgwarden.errors import CliError
from pgwarden.local import procs
from pgwarden.local.cluster import LocalCluster, Options
from pgwarden.local.component import STAGE_AGENTS, STAGE_EXTRAS, Component
from pgwarden.local.etcd import etcd_healthy
from pgwarden.local.layout import (
    NodePlan,
    ProcRecord,
    load_state,
    node_config,
    seed_settings,
    write_node_config,
)
from pgwarden.local.status import components_summary
from pgwarden.procinfo import stopped
from pgwarden.store.factory import open_store
from tests.cli.helpers import member, publish_cluster, run_cli
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

SLEEP = "import time; time.sleep(600)"


class Sleeper(Component):
    kind = "sleeper"
    stage = STAGE_EXTRAS

    def __init__(self, name: str = "sleeper") -> None:
        self.name = name

    def plan(self, cluster: LocalCluster) -> ProcRecord:
        marker = str(cluster.directory / f"{self.name}.marker")
        return ProcRecord(name=self.name, kind=self.kind, argv=[sys.executable, "-c", SLEEP, marker],
                          log=str(cluster.directory / f"{self.name}.log"), marker=marker, stage=self.stage)


@pytest.fixture
def cluster_dir(open_dir: Path) -> Iterator[Path]:
    d = open_dir / "demo"
    yield d
    if (d / "state.json").exists():  # whatever the test did, leave nothing running
        LocalCluster(d, out=lambda _: None).down(timeout=5)


def alive_pids(d: Path) -> dict[str, int]:
    state = load_state(d)
    assert state is not None
    return {r.name: r.pid for r in state.procs.values() if r.pid and procs.is_ours(r.pid, r.marker)}


def test_up_stop_start_down_and_up_again(cluster_dir: Path) -> None:
    lines: list[str] = []
    c = LocalCluster(cluster_dir, out=lines.append)
    c.up(Options(nodes=0, timeout=60), [Sleeper()])
    state = load_state(cluster_dir)
    assert state is not None and state.cluster == "demo" and set(state.procs) == {"etcd", "sleeper"}
    etcd = state.procs["etcd"]
    assert etcd.argv[0].endswith("etcd") and etcd_healthy(etcd.ports["client"])
    assert etcd.log == str(cluster_dir / "etcd.log") and etcd.marker == str(cluster_dir / "etcd")
    assert set(alive_pids(cluster_dir)) == {"etcd", "sleeper"}

    with pytest.raises(CliError, match="already holds a running cluster"):
        LocalCluster(cluster_dir).up(Options(nodes=0), [])

    first = alive_pids(cluster_dir)["sleeper"]
    r = run_cli("local", "stop", "--dir", str(cluster_dir), "sleeper")
    assert r.code == 0 and f"stopped sleeper (pid {first})" in r.err
    assert not procs.alive(first) and "sleeper" not in alive_pids(cluster_dir)
    r = run_cli("local", "stop", "--dir", str(cluster_dir), "sleeper")
    assert r.code == 0 and "not running" in r.err

    r = run_cli("local", "start", "--dir", str(cluster_dir), "sleeper")
    assert r.code == 0, r.err
    second = alive_pids(cluster_dir)["sleeper"]
    assert second != first
    r = run_cli("local", "start", "--dir", str(cluster_dir), "sleeper")
    assert r.code == 0 and "already running" in r.err

    r = run_cli("local", "stop", "--dir", str(cluster_dir), "nodeX")
    assert r.code == 1 and "no node or component named 'nodeX'" in r.err and "sleeper" in r.err

    r = run_cli("local", "down", "--dir", str(cluster_dir))
    assert r.code == 0, r.err
    assert alive_pids(cluster_dir) == {} and not procs.alive(second)
    assert not etcd_healthy(etcd.ports["client"])

    # A stopped cluster starts again from its state file, same ports.
    LocalCluster(cluster_dir, out=lines.append).up(Options(nodes=0, timeout=60), [])
    assert set(alive_pids(cluster_dir)) == {"etcd", "sleeper"} and etcd_healthy(etcd.ports["client"])
    LocalCluster(cluster_dir).down(timeout=5)
    with pytest.raises(CliError, match="stopped 0-node cluster"):
        LocalCluster(cluster_dir).up(Options(nodes=3), [])


def test_a_reused_pid_is_not_signalled(cluster_dir: Path) -> None:
    c = LocalCluster(cluster_dir, out=lambda _: None)
    c.up(Options(nodes=0, timeout=60), [Sleeper()])
    state = load_state(cluster_dir)
    assert state is not None
    pid = state.procs["sleeper"].pid
    assert pid is not None
    # Pretend the recorded PID now belongs to another program.
    state.procs["sleeper"].marker = str(cluster_dir / "something-else")
    (cluster_dir / "state.json").write_text(state.to_json())
    r = run_cli("local", "stop", "--dir", str(cluster_dir), "sleeper")
    assert r.code == 0 and "not running" in r.err
    assert procs.alive(pid)
    procs.terminate([(pid, str(cluster_dir / "sleeper.marker"))], 5)


def add_fake_agents(d: Path, names: list[str], running: set[str]) -> dict[str, int]:
    """Node files as `up` writes them, plus a sleeper per running node whose command line names
    its node file (that is how an agent is recognised)."""
    state = load_state(d)
    assert state is not None
    settings = seed_settings(None, [])
    pg_ports: dict[str, int] = {}
    for i, name in enumerate(names):
        plan = NodePlan(name, 15432 + i, 18008 + i)
        pg_ports[name] = plan.pg_port
        doc = node_config(d, state.cluster, plan, state.etcd_hosts(), settings, "pw:1-secret",
                          "r-secret", "a")
        config = d / name / "pgwarden.yaml"
        write_node_config(config, doc)
        argv = [sys.executable, "-c", SLEEP, "agent", "-c", str(config)]
        rec = ProcRecord(name=name, kind="agent", argv=argv, log=str(d / name / "agent.log"),
                         marker=str(config), config=str(config), stage=STAGE_AGENTS,
                         ports={"postgresql": plan.pg_port, "restapi": plan.api_port})
        if name in running:
            rec.pid = procs.spawn(argv, Path(rec.log), d)
        state.procs[name] = rec
    (d / "state.json").write_text(state.to_json())
    return pg_ports


def test_status_and_dsn_with_members_down(cluster_dir: Path) -> None:
    c = LocalCluster(cluster_dir, out=lambda _: None)
    c.up(Options(nodes=0, timeout=60), [])
    ports = add_fake_agents(cluster_dir, ["node1", "node2", "node3"], running={"node1", "node2"})
    state = load_state(cluster_dir)
    assert state is not None
    store = open_store(c._store_config(), state.cluster)  # type: ignore[arg-type]  # etcd has auth on
    try:
        # node3's key is still there (its TTL has not run out) but its agent is gone: stopped.
        publish_cluster(store, [
            member("node1", Role.PRIMARY, ports["node1"], 5000),
            member("node2", Role.REPLICA, ports["node2"], 4000),
            member("node3", Role.REPLICA, ports["node3"], 5000),
        ], leader="node1")
        r = run_cli("local", "status", "--dir", str(cluster_dir), "--format", "json")
    finally:
        store.close()
    assert r.code == 0, r.err
    rows = json.loads(r.out)["members"]
    assert [(m["name"], m["role"], m["state"], m["lag"]) for m in rows] == [
        ("node1", "primary", "running", 0), ("node2", "replica", "running", 1000),
        ("node3", "unknown", "stopped", None)]
    assert set(rows[2]) == {"name", "role", "state", "host", "port", "api_url", "timeline", "lag",
                            "streaming", "sync", "tags"}
    assert rows[2]["port"] == ports["node3"] and rows[2]["api_url"] == "http://127.0.0.1:18010"

    r = run_cli("local", "status", "--dir", str(cluster_dir))
    assert r.code == 0 and "stopped" in r.out and "etcd: running" in r.out

    r = run_cli("local", "dsn", "--dir", str(cluster_dir))
    assert r.code == 0
    last = r.out.strip().splitlines()[-1]
    hosts = ",".join(f"127.0.0.1:{ports[n]}" for n in ("node1", "node2", "node3"))
    assert last == f"postgresql://postgres:pw%3A1-secret@{hosts}/postgres?target_session_attrs=read-write&connect_timeout=2"
    r = run_cli("local", "dsn", "--dir", str(cluster_dir), "--replicas")
    assert r.out.strip().splitlines()[-1].endswith("target_session_attrs=prefer-standby&connect_timeout=2")

    # With etcd stopped, status still answers: running agents without an API show as starting.
    r = run_cli("local", "stop", "--dir", str(cluster_dir), "etcd")
    assert r.code == 0
    r = run_cli("local", "status", "--dir", str(cluster_dir), "--format", "json")
    assert r.code == 0, r.err
    states = {m["name"]: m["state"] for m in json.loads(r.out)["members"]}
    assert states == {"node1": "starting", "node2": "starting", "node3": "stopped"}

    r = run_cli("local", "down", "--dir", str(cluster_dir))
    assert r.code == 0 and alive_pids(cluster_dir) == {}


def test_status_tells_a_frozen_store_from_a_running_one(cluster_dir: Path) -> None:
    """A SIGSTOPped etcd is alive but answers nobody: `local status` says frozen, not running."""
    c = LocalCluster(cluster_dir, out=lambda _: None)
    c.up(Options(nodes=0, timeout=60), [])
    state = load_state(cluster_dir)
    assert state is not None
    etcd = state.procs["etcd"]
    pid = etcd.pid
    assert pid is not None

    def line() -> str:
        return next(s for s in components_summary(c) if s.startswith("etcd:"))

    assert line().startswith(f"etcd: running (pid {etcd.pid});")
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_for(lambda: stopped(pid), 10, "etcd stopped by SIGSTOP")  # the signal is asynchronous
        assert "frozen" in line() and "SIGCONT" in line()
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(lambda: line().startswith(f"etcd: running (pid {etcd.pid});"), 10, "etcd answering again")
