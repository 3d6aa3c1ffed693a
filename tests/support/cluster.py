"""A real local cluster for integration tests, driven through the `pgwarden local` CLI (so the
tests exercise the commands operators use), with the fault helpers tests need on top."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import urllib3
import yaml

from pgwarden.api.auth import basic_header
from pgwarden.local import procs
from pgwarden.local.layout import LOOPBACK, write_node_config
from pgwarden.procinfo import cmdline
from pgwarden.tls.contexts import TlsPaths
from pgwarden.tls.http import api_pool
from tests.support.wait import wait_for

_http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(total=2.0))


def pgwarden(*args: str, timeout: float = 240.0, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "pgwarden", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise AssertionError(f"pgwarden {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


def reachable_tmpdir(prefix: str) -> Path:
    """A fresh directory the unprivileged PostgreSQL user can traverse (pytest's is 0700)."""
    base = Path(tempfile.gettempdir()) / f"pgwarden-it-{prefix}-{uuid.uuid4().hex[:8]}"
    base.mkdir(mode=0o755)
    os.chmod(base, 0o755)
    return base


class Cluster:
    def __init__(self, name: str, nodes: int = 3, sync: str | None = None, sets: tuple[str, ...] = (),
                 store: str = "etcd", witness: bool = False, tls: bool = False,
                 bin_dir: str | None = None, standby_of: Path | None = None, pgbouncer: bool = False,
                 directory: Path | None = None):
        # `directory`: the caller's (made here, traversable by postgres, never removed by down()).
        self.owns_dir = directory is None
        if directory is None:
            self.dir = reachable_tmpdir(name)
        else:
            directory.mkdir(mode=0o755)
            directory.chmod(0o755)
            self.dir = directory
        self.nodes = nodes
        self.sync = sync
        self.sets = sets
        self.store = store  # etcd | zookeeper | raft (`local up --store`)
        self.witness = witness
        self.bin_dir = bin_dir  # `local up --bin-dir`: other PostgreSQL binaries than the embedded
        self.tls = tls  # `local up --tls`: https API (checked against the CA), verify-full SQL
        self._tls_http: urllib3.PoolManager | None = None
        self.standby_of = standby_of  # `local up --standby-of`: a standby site of that directory
        self.pgbouncer = pgbouncer  # `local up --pgbouncer`: a PgBouncer the agents keep pointed
        self.names = [f"node{i}" for i in range(1, nodes + 1)]

    # -- lifecycle -----------------------------------------------------------------------------
    def up(self) -> None:
        args = ["local", "up", "--nodes", str(self.nodes), "--dir", str(self.dir)]
        if self.sync:
            args += ["--sync", self.sync]
        for s in self.sets:
            args += ["--set", s]
        if self.store != "etcd":
            args += ["--store", self.store]
        if self.witness:
            args.append("--witness")
        if self.bin_dir:
            args += ["--bin-dir", self.bin_dir]
        if self.tls:
            args.append("--tls")
        if self.standby_of is not None:
            args += ["--standby-of", str(self.standby_of)]
        if self.pgbouncer:
            args.append("--pgbouncer")
        pgwarden(*args)

    def down(self) -> None:
        pgwarden("local", "down", "--dir", str(self.dir), check=False, timeout=120)
        if self.owns_dir and not os.environ.get("PGWARDEN_KEEP_TEST_DIRS"):  # keep logs for a post-mortem
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Cluster:
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    # -- inspection ----------------------------------------------------------------------------
    def config(self, node: str) -> dict[str, Any]:
        doc: dict[str, Any] = yaml.safe_load((self.dir / node / "pgwarden.yaml").read_text())
        return doc

    def config_path(self, node: str) -> str:
        return str(self.dir / node / "pgwarden.yaml")

    def api(self, node: str) -> str:
        r = self.config(node)["restapi"]
        return f"{'https' if r.get('tls') else 'http'}://{r['listen_address']}:{r['port']}"

    def api_auth(self, node: str) -> dict[str, str]:
        """The Authorization header from the node file's restapi.authentication (as ctl sends it)."""
        auth = self.config(node)["restapi"].get("authentication")
        return {"Authorization": basic_header(auth["username"], auth["password"])} if auth else {}

    def http(self, method: str, node: str, path: str, body: Any = None, auth: bool = True) -> tuple[int, Any]:
        """A request to the node's REST API, with its credentials unless not `auth`."""
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        headers = self.api_auth(node) if auth else None
        r = self._pool().request(method, self.api(node) + path, body=data, headers=headers)
        try:
            parsed = json.loads(r.data) if r.data else None
        except ValueError:
            parsed = r.data.decode(errors="replace")
        return r.status, parsed

    def ca(self) -> Path:
        return self.dir / "tls" / "ca.crt"

    def _pool(self) -> urllib3.PoolManager:
        if not self.tls:
            return _http
        if self._tls_http is None:  # the CA, host names verified; no client certificate
            self._tls_http = api_pool(TlsPaths(None, None, self.ca()), retries=False,
                                      timeout=urllib3.Timeout(total=2.0))
        return self._tls_http

    def status(self, node: str) -> dict[str, Any] | None:
        try:
            code, body = self.http("GET", node, "/status")
        except urllib3.exceptions.HTTPError:
            return None
        return body if code == 200 and isinstance(body, dict) else None

    def primaries(self) -> list[str]:
        """Nodes whose REST API says they are the writable primary right now."""
        out = []
        for n in self.names:
            try:
                code, _ = self.http("GET", n, "/primary")
            except urllib3.exceptions.HTTPError:
                continue
            if code == 200:
                out.append(n)
        return out

    def wait_primary(self, timeout: float = 60, exclude: tuple[str, ...] = ()) -> str:
        def one() -> str | None:
            p = self.primaries()
            assert len(p) <= 1, f"two primaries at once: {p}"
            return p[0] if p and p[0] not in exclude else None
        return wait_for(one, timeout, f"one primary (not {exclude})")

    def wait_replicas(self, names: list[str], timeout: float = 90) -> None:
        def ok() -> bool:
            for n in names:
                st = self.status(n)
                if st is None or st.get("role") != "replica" or st.get("state") != "running":
                    return False
                if st.get("replication_state") != "streaming":
                    return False
            return True
        wait_for(ok, timeout, f"{names} running as replicas and streaming")

    def conninfo(self, node: str) -> str:
        c = self.config(node)["postgresql"]
        su = c["superuser"]
        ssl = f" sslmode=verify-full sslrootcert={c['tls']['cafile']}" if c.get("tls") else ""
        return (f"host={c.get('listen_address', '127.0.0.1')} port={c['port']} user={su['username']} "
                f"password={su['password']} dbname=postgres connect_timeout=2{ssl}")

    def dsn(self) -> str:
        out = pgwarden("local", "dsn", "--dir", str(self.dir)).stdout.strip().splitlines()
        return out[-1]

    def sql(self, node: str, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.conninfo(node), autocommit=True) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    # -- faults --------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads((self.dir / "state.json").read_text())
        return doc

    def agent_pid(self, node: str) -> int:
        return int(self.state()["procs"][node]["pid"])

    def postmaster_pid(self, node: str) -> int | None:
        data_dir = Path(self.config(node)["data_dir"])
        try:
            return int((data_dir / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None

    def gate_pid(self, node: str) -> int | None:
        """The node's logical gate process (postgresql.logical_gate_port), as its agent recorded it."""
        run_dir = Path(str(self.config(node)["data_dir"]) + ".pgwarden")
        try:
            return int((run_dir / "gate.pid").read_text())
        except (OSError, ValueError):
            return None

    def node_pids(self, node: str) -> list[int]:
        """The node's agent, logical gate and postmaster that run now. Each PID is checked to
        be that process still: the files naming them outlive the processes (a killed node's
        postmaster.pid), and with PIDs wrapping around many times in a suite run a stale one can
        name anything, such as the session's ZooKeeper server."""
        found: list[int] = []
        rec = self.state()["procs"][node]
        if procs.is_ours(rec.get("pid"), str(rec["marker"])):
            found.append(int(rec["pid"]))
        gate = self.gate_pid(node)
        node_file = os.fsencode(os.path.abspath(self.config_path(node)))
        if gate and b"pgwarden.gate.process" in cmdline(gate) and node_file in cmdline(gate):
            found.append(gate)
        data_dir = Path(self.config(node)["data_dir"])
        pm = self.postmaster_pid(node)
        if pm and procs.is_postmaster_of(pm, data_dir):
            found.append(pm)
        return found

    def kill_node(self, node: str) -> None:
        """SIGKILL the node's agent, its logical gate and its postmaster together (a node crash)."""
        for pid in self.node_pids(node):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def start_node(self, node: str) -> None:
        pgwarden("local", "start", "--dir", str(self.dir), node)

    def stop_node(self, node: str) -> None:
        pgwarden("local", "stop", "--dir", str(self.dir), node)

    def etcd_pid(self) -> int:
        return self.proc_pid("etcd")

    def etcd_address(self) -> tuple[str, int]:
        """Where the etcd `local up` started listens for clients."""
        return LOOPBACK, int(self.state()["procs"]["etcd"]["ports"]["client"])

    def restart_with_etcd_hosts(self, hosts: list[str]) -> None:
        """`local down`, every node file's `store.etcd.hosts` set to `hosts` (e.g. a proxy in front
        of the etcd), then `local up` again on the same data and ports. `local status` and `dsn`
        keep reaching the etcd itself (state.json)."""
        pgwarden("local", "down", "--dir", str(self.dir), timeout=120)
        for n in self.names:
            doc = self.config(n)
            doc["store"]["etcd"]["hosts"] = list(hosts)
            write_node_config(self.dir / n / "pgwarden.yaml", doc)
        pgwarden("local", "up", "--nodes", str(self.nodes), "--dir", str(self.dir))

    def proc_pid(self, name: str) -> int:
        """PID of any process `local up` started (a node's agent, etcd, zookeeper, witness)."""
        return int(self.state()["procs"][name]["pid"])

    def node_cmd(self, node: str, *args: str) -> subprocess.CompletedProcess[str]:
        """`pgwarden node -c <node's file> ...`, not checked: tests look at refusals too."""
        return pgwarden("node", "-c", self.config_path(node), *args, check=False, timeout=300)

    def ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return pgwarden("ctl", "-c", self.config_path(self.names[0]), *args, check=check, timeout=90)


def is_writable(cl: Cluster, node: str) -> bool | None:
    """True/False when the node's PostgreSQL answers, None when it does not."""
    try:
        rows = cl.sql(node, "SELECT NOT pg_is_in_recovery()")
    except psycopg.Error:
        return None
    return bool(rows[0][0])


def now() -> float:
    return time.monotonic()

