"""pgwarden driver: a real local cluster through the CLI (`pgwarden local ...`, `pgwarden ctl ...`)
and each member's REST `GET /status`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.drivers.base import ClusterError, SyncMode, Timing
from bench.procs import alive, descendants, http_json, kill_pids, wait_for
from pgwarden.api.auth import basic_header

BASE = Path("/var/lib/pgwarden-bench")

PRESETS = {
    "default": Timing("default", ttl=4, loop_wait=1, retry_timeout=1),
    "fastest": Timing("fastest", ttl=2, loop_wait=0.25, retry_timeout=0.5),
}


def api_headers(node_file: Path) -> dict[str, str]:
    """The Authorization header for a member's protected endpoints (GET /cluster), from
    `restapi.authentication` in a node file; none when it has none."""
    auth = (yaml.safe_load(node_file.read_text()).get("restapi") or {}).get("authentication")
    return {"Authorization": basic_header(auth["username"], auth["password"])} if auth else {}


def sync_promised(api_urls: Iterable[str], mode: SyncMode, standbys: Collection[str],
                  headers: dict[str, str] | None = None) -> bool:
    """The store's synchronous promise (GET /cluster's `sync`: leader, members, quorum; `headers`
    carry the REST API credentials it needs), as the first member that answers tells it, is in
    place for `mode`: `on`, it names a synchronous standby; `quorum`, it names every one of
    `standbys` as a voter with a quorum of at least 1 (the steady state of quorum mode, so each
    run's kill meets the same promise). Always true when off."""
    if mode == "off":
        return True
    for url in api_urls:
        try:
            cluster = http_json(f"{url.rstrip('/')}/cluster", timeout=1.0, headers=headers)
        except Exception:  # a member being restarted: ask the next one
            continue
        sync = cluster.get("sync") if isinstance(cluster, dict) else None
        if not sync or not sync.get("members"):
            return False
        if mode == "quorum":
            return int(sync.get("quorum") or 0) >= 1 and set(standbys) <= set(sync["members"])
        return True
    return False


@dataclass
class PgwardenDriver:
    name: str = "pgwarden"
    presets: dict[str, Timing] = field(default_factory=lambda: dict(PRESETS))
    keep: bool = False
    cli: list[str] = field(default_factory=lambda: [sys.executable, "-m", "pgwarden"])
    dir: Path | None = None
    sync: SyncMode = "off"
    store: str = "etcd"  # `local up --store`: etcd | zookeeper | raft
    _members: list[str] = field(default_factory=list)
    _killed: list[str] = field(default_factory=list)
    _pids: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (agent, postmaster)
    failsafe: bool = False

    # -- CLI plumbing ----------------------------------------------------------------------------

    def _run(self, *args: str, timeout: float = 120) -> str:
        res = subprocess.run([*self.cli, *args], capture_output=True, text=True, timeout=timeout)
        if res.returncode != 0:
            raise ClusterError(f"pgwarden {' '.join(args)} failed: {(res.stderr or res.stdout).strip()}")
        return res.stdout

    def _status(self) -> list[dict[str, Any]]:
        assert self.dir is not None
        out = self._run("local", "status", "--dir", str(self.dir), "--format", "json", timeout=30)
        members = json.loads(out)["members"]
        assert isinstance(members, list)
        return members

    # -- lifecycle -------------------------------------------------------------------------------

    def up(self, nodes: int = 3, sync: SyncMode = "off", timing: Timing | None = None) -> None:
        timing = timing or self.presets["default"]
        self.sync = sync
        BASE.mkdir(parents=True, exist_ok=True)
        self.dir = BASE / f"run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{self.name}"
        args = ["local", "up", "--nodes", str(nodes), "--dir", str(self.dir)]
        if sync != "off":
            args += ["--sync", sync]  # on | quorum
        if self.store != "etcd":
            args += ["--store", self.store]
        # Timing is cluster-wide and lives in the store: seed it at bootstrap with --set.
        args += ["--set", f"ttl={timing.ttl:g}", "--set", f"loop_wait={timing.loop_wait:g}",
                 "--set", f"retry_timeout={timing.retry_timeout:g}"]
        if self.failsafe:
            args += ["--set", "failsafe=on"]
        self._run(*args, timeout=300)
        self._members = [m["name"] for m in self._status()]
        self.wait_healthy(timeout=120)
        if self.failsafe:
            # Armed once every member has read back the full failsafe set (rule 17).
            wait_for(self._failsafe_armed, 60, "every member's failsafe set")

    def enable_failsafe(self) -> None:
        self.failsafe = True

    def _failsafe_armed(self) -> bool:
        want = sorted(self._members)
        for m in self._status():
            try:
                st = http_json(f"{m['api_url'].rstrip('/')}/status", timeout=1.0)
            except Exception:
                return False
            if sorted(st.get("failsafe_members") or []) != want:
                return False
        return True

    def store_pid(self) -> int:
        assert self.dir is not None
        state = json.loads((self.dir / "state.json").read_text())
        return int(state["procs"]["etcd"]["pid"])

    def heal(self) -> None:
        assert self.dir is not None
        for name in self._killed:
            self._run("local", "start", "--dir", str(self.dir), name)
        self._killed = []

    def down(self) -> None:
        if self.dir is None:
            return
        try:
            self._run("local", "down", "--dir", str(self.dir), timeout=60)
        except (ClusterError, subprocess.TimeoutExpired):
            # The CLI could not stop them: end the agents and postmasters we saw, by PID.
            roots = [pid for pair in self._pids.values() for pid in pair if alive(pid)]
            kill_pids(roots + descendants(roots), signal.SIGKILL)
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None

    # -- observation -----------------------------------------------------------------------------

    def _member_status(self, member: dict[str, Any]) -> dict[str, Any]:
        status = http_json(f"{str(member['api_url']).rstrip('/')}/status", timeout=1.0)
        assert isinstance(status, dict)
        self._pids[str(member["name"])] = (int(status["agent_pid"]), int(status["postmaster_pid"]))
        return status

    def _healthy(self) -> bool:
        members = self._status()
        primaries = [m for m in members if m.get("role") == "primary" and m.get("state") == "running"]
        streaming = [m for m in members if m.get("role") == "replica" and m.get("state") == "running"
                     and m.get("streaming")]
        # A crash before the store names a synchronous standby (or quorum) leaves no safe candidate
        # (SAFETY.md rule 7): wait for it.
        assert self.dir is not None
        sync_ok = sync_promised((str(m["api_url"]) for m in members), self.sync,
                                [str(m["name"]) for m in streaming],
                                api_headers(self.dir / self._members[0] / "pgwarden.yaml"))
        return len(primaries) == 1 and len(streaming) == len(self._members) - 1 and sync_ok

    def wait_healthy(self, timeout: float) -> None:
        wait_for(self._healthy, timeout, "pgwarden: one primary and all replicas streaming", interval=0.1)

    def primary(self) -> str:
        for m in self._status():
            if m.get("role") == "primary":
                return str(m["name"])
        raise ClusterError("pgwarden reports no primary")

    def dsn(self) -> str:
        assert self.dir is not None
        lines = self._run("local", "dsn", "--dir", str(self.dir), timeout=30).strip().splitlines()
        return lines[-1]

    def leader_changes(self) -> int:
        for m in self._status():
            if m.get("name") not in self._killed:
                history = http_json(f"{str(m['api_url']).rstrip('/')}/history", timeout=2.0)
                return len(history) if isinstance(history, list) else 0
        raise ClusterError("no pgwarden member to ask for /history")

    def agent_pids(self) -> list[int]:
        pids = []
        for m in self._status():
            if m.get("name") not in self._killed:
                pid = int(self._member_status(m)["agent_pid"])
                if alive(pid):
                    pids.append(pid)
        return pids

    # -- faults and operations -------------------------------------------------------------------

    def kill_primary(self) -> None:
        member = next((m for m in self._status() if m.get("role") == "primary"), None)
        if member is None:
            raise ClusterError("pgwarden reports no primary to kill")
        status = self._member_status(member)
        roots = [int(status["agent_pid"]), int(status["postmaster_pid"])]
        # One sweep, root processes first: the node dies as a whole, as in a crash of the machine.
        kill_pids(roots + descendants(roots))
        wait_for(lambda: not any(alive(p) for p in roots), 10, "killed pgwarden processes to exit")
        self._killed.append(str(member["name"]))

    def partition_primary(self) -> None:
        raise ClusterError("loopback cannot be partitioned: bench/drivers/pgwarden_netns.py can")

    def switchover(self, candidate: str | None = None) -> None:
        assert self.dir is not None
        config = self.dir / self.primary() / "pgwarden.yaml"
        args = ["ctl", "-c", str(config), "switchover"]
        if candidate:
            args += ["--candidate", candidate]
        self._run(*args, "--force", timeout=120)
