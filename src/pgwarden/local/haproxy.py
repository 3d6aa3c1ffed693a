"""`pgwarden local up --haproxy`: a real HAProxy in front of the local cluster, with a read-write
listener (the primary) and a read-only one (the replicas), configured by `routing.haproxy`."""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path

from pgwarden.config.load import load_node_config
from pgwarden.config.schema import NodeConfig
from pgwarden.errors import CliError
from pgwarden.local.cluster import LocalCluster
from pgwarden.local.component import Component
from pgwarden.local.layout import LOOPBACK, ProcRecord, free_ports, make_dir
from pgwarden.report import ssl_options
from pgwarden.routing.dsn import proxy_dsn
from pgwarden.routing.haproxy import Backend, Listeners, api_port, is_https, render

NAME = "haproxy"
PRIMARY = "read-write"
REPLICAS = "read-only"


def find_haproxy() -> Path:
    found = shutil.which("haproxy") or next(
        (p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if Path(p).exists()), None)
    if found is None:
        raise CliError("no haproxy binary found (Debian: apt-get install haproxy)")
    return Path(found)


def add_up_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--haproxy", action="store_true",
                        help="also run HAProxy: a read-write and a read-only address for the cluster")


def up_components(args: argparse.Namespace, cluster: LocalCluster) -> Sequence[Component]:
    if not getattr(args, "haproxy", False):
        return []
    return [HaproxyComponent(find_haproxy())]


def node_configs(cluster: LocalCluster) -> list[NodeConfig]:
    out = []
    for rec in cluster.current_state().agents():
        if rec.config is not None:
            out.append(load_node_config(rec.config))
    return out


class HaproxyComponent(Component):
    kind = NAME

    def __init__(self, binary: Path) -> None:
        self.name = NAME
        self.binary = binary

    def plan(self, cluster: LocalCluster) -> ProcRecord:
        backends = []
        ca: str | None = None
        for cfg in node_configs(cluster):
            host, port = cfg.postgresql.connect_host_port()
            url = cfg.restapi.url()
            backends.append(Backend(cfg.name, host, port, api_port(url), is_https(url)))
            if cfg.restapi.tls is not None and cfg.restapi.tls.cafile is not None:
                ca = str(cfg.restapi.tls.cafile.absolute())
        rw, ro = free_ports(2)
        hdir = cluster.directory / NAME
        make_dir(hdir)
        config = hdir / "haproxy.cfg"
        lst = Listeners(bind=LOOPBACK, primary_port=rw, replica_port=ro,
                        stats_socket=str(hdir / "admin.sock"), check_ca_file=ca)
        config.write_text(render(backends, lst, cluster.current_state().cluster))
        check = subprocess.run([str(self.binary), "-c", "-q", "-f", str(config)], capture_output=True,
                               text=True, timeout=30)
        if check.returncode != 0:
            raise CliError(f"haproxy rejected {config}: {check.stderr.strip() or check.stdout.strip()}")
        cluster.out(f"HAProxy: read-write {LOOPBACK}:{rw}, read-only {LOOPBACK}:{ro}")
        return ProcRecord(
            name=self.name, kind=self.kind, argv=[str(self.binary), "-db", "-f", str(config)],
            log=str(cluster.directory / "haproxy.log"), marker=str(config),
            ports={PRIMARY: rw, REPLICAS: ro}, stage=self.stage,
        )

    def is_ready(self, cluster: LocalCluster, record: ProcRecord) -> bool:
        """Ready once the read-write listener has exactly one server up and it is the leader:
        HAProxy counts servers as up until their first checks fail."""
        view = cluster.view()
        if view is None or view.leader is None:
            return False
        try:
            states = server_states(Path(record.marker).parent / "admin.sock")
        except OSError:
            return False
        up = {(proxy, srv) for (proxy, srv), st in states.items() if st.startswith("UP")}
        writers = sorted(srv for proxy, srv in up if proxy == "primary")
        return writers == [view.leader.name] and ("replicas", view.leader.name) not in up


def server_states(sock: Path, timeout: float = 2.0) -> dict[tuple[str, str], str]:
    """(proxy, server) -> status ("UP", "DOWN", "UP 1/2", ...) from the admin socket's `show stat`."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(sock))
        s.sendall(b"show stat\n")
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    lines = b"".join(chunks).decode(errors="replace").splitlines()
    if not lines or not lines[0].startswith("# "):
        raise OSError("unexpected answer from the HAProxy admin socket")
    head = lines[0][2:].split(",")
    ix_p, ix_s, ix_st = head.index("pxname"), head.index("svname"), head.index("status")
    out = {}
    for line in lines[1:]:
        f = line.split(",")
        if len(f) > ix_st and f[ix_s] not in ("FRONTEND", "BACKEND"):
            out[(f[ix_p], f[ix_s])] = f[ix_st]
    return out


def dsn(cluster: LocalCluster, replicas: bool = False) -> str:
    state = cluster.current_state()
    rec = state.procs.get(NAME)
    if rec is None:
        raise CliError(f"no HAProxy in {cluster.directory}; create the cluster with `local up --haproxy`")
    cfgs = node_configs(cluster)
    if not cfgs:
        raise CliError(f"no readable node file under {cluster.directory}")
    su = cfgs[0].postgresql.superuser
    return proxy_dsn(LOOPBACK, rec.ports[REPLICAS if replicas else PRIMARY], su.username, su.secret(),
                     ssl=ssl_options(cfgs[0].postgresql.tls))
