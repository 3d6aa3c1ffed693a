"""Where a local cluster lives on disk: its directory layout, the node files `local up` writes,
the ports it picks, the state file recording what it started, and the check that PostgreSQL's
OS user can reach the directory at all.
"""

from __future__ import annotations

import copy
import grp
import json
import os
import pwd
import re
import secrets
import shutil
import socket
import stat
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import yaml

from pgwarden.config.errors import ConfigError
from pgwarden.config.load import apply_settings, parse_node_config, to_data
from pgwarden.config.schema import ClusterSettings, PostgresConfig, SyncMode
from pgwarden.errors import CliError, UsageError

LOOPBACK = "127.0.0.1"
STATE_FILE = "state.json"
STATE_VERSION = 1
TIMING_KEYS = ("ttl", "loop_wait", "retry_timeout")
SUGGESTED_DIR = "/var/lib/pgwarden/local"
API_USER = "pgwarden"  # the REST API user `local up` writes into every node file


def cluster_name(directory: Path) -> str:
    """The directory's name when it is a valid cluster name, else 'local'."""
    name = directory.resolve().name
    return name if re.fullmatch(r"[A-Za-z0-9_.-]+", name) and name not in (".", "..") else "local"


def node_names(n: int) -> list[str]:
    return [f"node{i}" for i in range(1, n + 1)]


def free_ports(count: int, host: str = LOOPBACK, avoid: Iterable[int] = ()) -> list[int]:
    """`count` distinct ports nobody listens on now. All sockets stay bound until every port is
    chosen, so the kernel cannot hand the same one out twice."""
    taken = set(avoid)
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(s)
            s.bind((host, 0))
            port = int(s.getsockname()[1])
            if port not in taken:
                taken.add(port)
                ports.append(port)
            if len(held) > count + 100:
                raise CliError(f"could not find {count} free ports on {host}")
    finally:
        for s in held:
            s.close()
    return ports


# -- can the PostgreSQL OS user reach DIR? -------------------------------------------------------


@dataclass(frozen=True)
class OsUser:
    name: str
    uid: int | None  # None: the user does not exist yet (the agent creates it): "other" bits apply
    gids: frozenset[int]


def os_user(name: str) -> OsUser:
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        return OsUser(name, None, frozenset())
    gids = {pw.pw_gid} | {g.gr_gid for g in grp.getgrall() if name in g.gr_mem}
    return OsUser(name, pw.pw_uid, frozenset(gids))


def can_search(st: os.stat_result, user: OsUser) -> bool:
    """Whether `user` may traverse a directory with this stat, by the owner/group/other bits
    that the kernel would apply to it (exactly one class applies)."""
    if user.uid == 0:
        return True
    if user.uid is not None and st.st_uid == user.uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid in user.gids:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def unreachable_component(directory: Path, user: OsUser) -> Path | None:
    """The first existing component of `directory` (from /) that `user` cannot traverse.
    Components that do not exist yet are created by `local up` with mode 0755."""
    path = Path(os.path.abspath(directory))
    for p in [*reversed(path.parents), path]:
        try:
            st = p.stat()
        except FileNotFoundError:
            return None
        if not can_search(st, user):
            return p
    return None


def check_reachable(directory: Path, user_name: str) -> None:
    """Refuse early, with the reason, when PostgreSQL (run as `user_name` because we are root)
    could not reach its data directory under `directory`."""
    if os.geteuid() != 0:
        return  # PostgreSQL runs as us: if we can use DIR, so can it
    user = os_user(user_name)
    bad = unreachable_component(directory, user)
    if bad is not None:
        raise UsageError(
            f"{directory}: PostgreSQL runs as OS user '{user_name}' (we are root), which cannot "
            f"enter {bad} (mode {stat.S_IMODE(bad.stat().st_mode):o}); choose a directory it can "
            f"reach, e.g. --dir {SUGGESTED_DIR}"
        )


def make_dir(path: Path) -> None:
    """mkdir -p with mode 0755 whatever the umask, so the OS user can traverse what we create."""
    missing: list[Path] = []
    p = Path(os.path.abspath(path))
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir(exist_ok=True)
        d.chmod(0o755)


# -- node files ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodePlan:
    name: str
    pg_port: int
    api_port: int
    gate_port: int | None = None  # postgresql.logical_gate_port (pgwarden/gate)


def seed_settings(sync: str | None, assignments: Sequence[str]) -> ClusterSettings:
    """The cluster settings `local up` seeds: defaults, --sync, then each --set (validated, so a
    typo fails before anything starts)."""
    sets = [f"synchronous_mode={SyncMode(sync).value}"] if sync is not None else []
    return apply_settings(ClusterSettings(), [*sets, *assignments])


def node_config(
    directory: Path,
    cluster: str,
    node: NodePlan,
    etcd_hosts: Sequence[str],
    settings: ClusterSettings,
    superuser_password: str,
    replication_password: str,
    api_password: str,
    store: dict[str, Any] | None = None,
    bin_dir: Path | None = None,
    tls: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The YAML document for one node (validated by the same loader the agent uses). `store` is
    the node file's `store` section; by default etcd on `etcd_hosts`. `api_password` protects the
    node's REST API (restapi.authentication, user API_USER): one for the whole cluster, so that
    `ctl` with any node's file can reach every member. `tls` (certfile, keyfile, cafile): the
    REST API on https and PostgreSQL with ssl = on, both with the node's certificate."""
    ndir = directory / node.name
    seed = to_data(settings)
    defaults = to_data(ClusterSettings())
    timing = {k: seed[k] for k in TIMING_KEYS}
    rest = {k: v for k, v in seed.items() if k not in TIMING_KEYS and v != defaults[k]}
    doc: dict[str, Any] = {
        "cluster": cluster,
        "name": node.name,
        "data_dir": str(ndir / "data"),
        "postgresql": {
            "listen_address": LOOPBACK,
            "port": node.pg_port,
            "superuser": {"username": "postgres", "password": superuser_password},
            "replication": {"username": "replicator", "password": replication_password},
            **({"logical_gate_port": node.gate_port} if node.gate_port else {}),
        },
        "restapi": {"listen_address": LOOPBACK, "port": node.api_port,
                    "authentication": {"username": API_USER, "password": api_password}},
        # A copy: callers pass one section for every node, and TLS adds this node's certificate.
        "store": copy.deepcopy(store) if store is not None else {"etcd": {"hosts": list(etcd_hosts)}},
        "log": {"file": str(ndir / "agent.log")},
        "timing": timing,
    }
    if rest:
        doc["settings"] = rest
    if bin_dir is not None:
        doc["postgresql"]["bin_dir"] = str(bin_dir.resolve())
    if tls is not None:
        # optional: members and ctl present their certificates (checked against the CA), while
        # load balancers' health checks need none; the API still requires its password.
        doc["restapi"]["tls"] = {**tls, "verify_client": "optional"}
        doc["postgresql"]["tls"] = dict(tls)
        if "etcd" in doc["store"]:  # the local etcd: https, this node's certificate as the client's
            doc["store"]["etcd"]["tls"] = dict(tls)
    try:
        parse_node_config(doc, f"{node.name} config")
    except ConfigError as e:
        raise CliError(f"generated an invalid node file (a bug): {e}") from None
    return doc


TLS_DIR = "tls"


def make_certificates(
    directory: Path, names: Sequence[str], ca_from: Path | None = None
) -> dict[str, dict[str, str]]:
    """`local up --tls`: a CA and a certificate per node under DIR/tls (keys 0600), for loopback
    (the address every local node is reached at) and localhost; each node's `tls` block.
    `ca_from`: another local cluster's directory whose CA signs these certificates too (a
    standby site: both sites then check each other's servers and APIs against one CA)."""
    from pgwarden.tls.certs import CertFiles, make_ca, make_cert  # cryptography only when asked for

    tdir = directory / TLS_DIR
    make_dir(tdir)
    if ca_from is None:
        ca = make_ca(tdir)
    else:
        ca = CertFiles(tdir / "ca.crt", tdir / "ca.key")
        shutil.copyfile(ca_from / TLS_DIR / "ca.crt", ca.certfile)
        write_private(ca.keyfile, (ca_from / TLS_DIR / "ca.key").read_text())
    out = {}
    for name in names:
        cert = make_cert(ca, tdir, name, [LOOPBACK, "localhost"])
        out[name] = {"certfile": str(cert.certfile), "keyfile": str(cert.keyfile), "cafile": str(ca.certfile)}
    return out


def write_private(path: Path, text: str) -> None:
    """Write atomically with mode 0600: node files hold passwords."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_node_config(path: Path, doc: dict[str, Any]) -> None:
    make_dir(path.parent)
    write_private(path, yaml.safe_dump(doc, sort_keys=False, default_flow_style=False))


def new_password() -> str:
    # The servers listen on loopback, but other local users can reach loopback too.
    return secrets.token_urlsafe(12)


def default_os_user() -> str:
    return next(str(f.default) for f in msgspec.structs.fields(PostgresConfig) if f.name == "os_user")


# -- the state file ------------------------------------------------------------------------------


@dataclass
class ProcRecord:
    """One background process `local up` started: enough to check it is still ours (`marker`
    must appear in its /proc cmdline) and to start it again the same way."""

    name: str
    kind: str  # "etcd" | "agent" | whatever an extra component calls itself
    argv: list[str]
    log: str
    marker: str
    pid: int | None = None
    ports: dict[str, int] = field(default_factory=dict)
    config: str | None = None  # agents: their node file
    stage: int = 0  # start order; stopped in reverse

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ProcRecord:
        return cls(
            name=str(d["name"]), kind=str(d["kind"]), argv=[str(a) for a in d["argv"]], log=str(d["log"]),
            marker=str(d["marker"]), pid=None if d.get("pid") is None else int(d["pid"]),
            ports={str(k): int(v) for k, v in (d.get("ports") or {}).items()},
            config=d.get("config"), stage=int(d.get("stage", 0)),
        )


@dataclass
class State:
    """DIR/state.json."""

    directory: str
    cluster: str
    procs: dict[str, ProcRecord] = field(default_factory=dict)
    version: int = STATE_VERSION

    def agents(self) -> list[ProcRecord]:
        return sorted((p for p in self.procs.values() if p.kind == "agent"), key=lambda p: _node_key(p.name))

    def etcd_hosts(self) -> list[str]:
        etcd = self.procs.get("etcd")
        return [f"{LOOPBACK}:{etcd.ports['client']}"] if etcd else []

    def to_json(self) -> str:
        return json.dumps(
            {"version": self.version, "directory": self.directory, "cluster": self.cluster,
             "procs": {k: asdict(v) for k, v in self.procs.items()}},
            indent=2,
        )


def _node_key(name: str) -> tuple[str, int]:
    m = re.fullmatch(r"(.*?)(\d+)", name)
    return (m.group(1), int(m.group(2))) if m else (name, 0)


def state_path(directory: Path) -> Path:
    return directory / STATE_FILE


def load_state(directory: Path) -> State | None:
    path = state_path(directory)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        d = json.loads(text)
        if int(d.get("version", 0)) != STATE_VERSION:
            raise CliError(f"{path}: state version {d.get('version')} is not {STATE_VERSION}")
        return State(
            directory=str(d["directory"]), cluster=str(d["cluster"]),
            procs={str(k): ProcRecord.from_dict(v) for k, v in d["procs"].items()},
        )
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise CliError(f"{path}: not a pgwarden local state file ({e})") from None


def require_state(directory: Path) -> State:
    state = load_state(directory)
    if state is None:
        raise CliError(f"{directory} holds no local cluster (no {STATE_FILE}); start one with "
                       f"`pgwarden local up --dir {directory}`")
    return state


def save_state(directory: Path, state: State) -> None:
    path = state_path(directory)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(state.to_json())
    os.replace(tmp, path)
