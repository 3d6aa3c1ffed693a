"""`pgwarden local up --pgbouncer`: a real PgBouncer (transaction pooling) in front of the local
cluster, which the agents keep pointed at the primary (`pgwarden.routing.router`)."""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pgwarden.errors import CliError
from pgwarden.local.cluster import LocalCluster
from pgwarden.local.component import Component
from pgwarden.local.haproxy import node_configs
from pgwarden.local.layout import LOOPBACK, ProcRecord, default_os_user, free_ports, make_dir
from pgwarden.report import ssl_options
from pgwarden.routing.dsn import proxy_dsn
from pgwarden.routing.pgbouncer import AdminConsole, AdminError

NAME = "pgbouncer"
DATABASE = "postgres"


def find_pgbouncer() -> Path:
    found = shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/local/bin/pgbouncer") if Path(p).exists()), None)
    if found is None:
        raise CliError("no pgbouncer binary found (Debian: apt-get install pgbouncer)")
    return Path(found)


def add_up_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pgbouncer", action="store_true",
                        help="also run PgBouncer, kept pointed at the primary by the agents")


def up_components(args: argparse.Namespace, cluster: LocalCluster) -> Sequence[Component]:
    if not getattr(args, "pgbouncer", False):
        return []
    return [PgBouncerComponent(find_pgbouncer(), cluster.directory, free_ports(1)[0])]


def tls_lines(directory: Path) -> str:
    """With `local up --tls`: clients must use TLS (PgBouncer's own certificate), and PgBouncer's
    connections to PostgreSQL (hostssl only) verify the server against the cluster's CA."""
    return f"""\
client_tls_sslmode = require
client_tls_cert_file = {directory / "pgbouncer.crt"}
client_tls_key_file = {directory / "pgbouncer.key"}
server_tls_sslmode = verify-full
server_tls_ca_file = {directory / "ca.crt"}
"""


def ini_text(directory: Path, port: int, target: tuple[str, int], admin: str, tls: bool = False) -> str:
    host, pg_port = target
    return f"""\
;; Written by pgwarden local up --pgbouncer. The leading agent rewrites the [databases] line.
[databases]
{DATABASE} = host={host} port={pg_port} dbname={DATABASE}

[pgbouncer]
listen_addr = {LOOPBACK}
listen_port = {port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {directory / "userlist.txt"}
admin_users = {admin}
;; Transaction pooling: PAUSE then waits only for running transactions, not for clients to leave.
pool_mode = transaction
max_client_conn = 500
default_pool_size = 20
;; A failed server login (the old primary going away) is retried after 1 s, not the default 15 s.
server_login_retry = 1
query_wait_timeout = 60
ignore_startup_parameters = extra_float_digits,options
""" + (tls_lines(directory) if tls else "")


class PgBouncerComponent(Component):
    kind = NAME

    def __init__(self, binary: Path, directory: Path, port: int) -> None:
        self.name = NAME
        self.binary = binary
        self.dir = Path(os.path.abspath(directory)) / NAME
        self.port = port

    def amend_node_config(self, doc: dict[str, Any]) -> None:
        su = doc["postgresql"]["superuser"]
        doc["pgbouncer"] = {
            "host": LOOPBACK, "port": self.port,
            "admin": {"username": su["username"], "password": su["password"]},
            "databases": [DATABASE], "config_file": str(self.dir / "pgbouncer.ini"),
        }

    def plan(self, cluster: LocalCluster) -> ProcRecord:
        cfgs = node_configs(cluster)
        if not cfgs:
            raise CliError("no node files to configure PgBouncer from")
        view = cluster.view(0)
        leader = view.members.get(view.leader.name) if view is not None and view.leader is not None else None
        target = (leader.host, leader.port) if leader is not None else cfgs[0].postgresql.connect_host_port()
        su = cfgs[0].postgresql.superuser
        os_user = cfgs[0].postgresql.os_user or default_os_user()
        make_dir(self.dir)
        tls = cfgs[0].postgresql.tls
        ini = self.dir / "pgbouncer.ini"
        ini.write_text(ini_text(self.dir, self.port, target, su.username, tls is not None))
        users = self.dir / "userlist.txt"
        users.write_text(f'"{su.username}" "{su.secret()}"\n')
        users.chmod(0o600)
        owned = [self.dir, ini, users]
        if tls is not None and tls.cafile is not None:  # files PgBouncer (the OS user) reads
            owned += self._tls_files(cluster, tls.cafile)
        pw = pwd.getpwnam(os_user)
        for p in owned:
            os.chown(p, pw.pw_uid, pw.pw_gid)
        cluster.out(f"PgBouncer: {LOOPBACK}:{self.port} (database {DATABASE})")
        # PgBouncer refuses to run as root: -u switches to the PostgreSQL OS user.
        return ProcRecord(
            name=self.name, kind=self.kind, argv=[str(self.binary), "-u", os_user, str(ini)],
            log=str(cluster.directory / "pgbouncer.log"), marker=str(ini),
            ports={"pgbouncer": self.port}, stage=self.stage,
        )

    def _tls_files(self, cluster: LocalCluster, cafile: Path) -> list[Path]:
        from pgwarden.local.layout import TLS_DIR
        from pgwarden.tls.certs import CertFiles, make_cert

        ca = CertFiles(cafile, cluster.directory / TLS_DIR / "ca.key")
        cert = make_cert(ca, self.dir, NAME, [LOOPBACK, "localhost"])
        shutil.copyfile(cafile, self.dir / "ca.crt")
        return [cert.certfile, cert.keyfile, self.dir / "ca.crt"]

    def is_ready(self, cluster: LocalCluster, record: ProcRecord) -> bool:
        """Ready once the admin console answers and the database points at the leader, unpaused."""
        view = cluster.view()
        if view is None or view.leader is None or view.leader.name not in view.members:
            return False
        leader = view.members[view.leader.name]
        cfgs = node_configs(cluster)
        su = cfgs[0].postgresql.superuser
        console = AdminConsole(LOOPBACK, record.ports["pgbouncer"], su.username, su.secret())
        try:
            row = console.databases(2.0).get(DATABASE)
        except AdminError:
            return False
        finally:
            console.close()
        return row is not None and (row.host, row.port) == (leader.host, leader.port) and not row.paused


def dsn(cluster: LocalCluster) -> str:
    rec = cluster.current_state().procs.get(NAME)
    if rec is None:
        raise CliError(f"no PgBouncer in {cluster.directory}; create the cluster with `local up --pgbouncer`")
    cfgs = node_configs(cluster)
    if not cfgs:
        raise CliError(f"no readable node file under {cluster.directory}")
    su = cfgs[0].postgresql.superuser
    return proxy_dsn(LOOPBACK, rec.ports["pgbouncer"], su.username, su.secret(), DATABASE,
                     ssl=ssl_options(cfgs[0].postgresql.tls))
