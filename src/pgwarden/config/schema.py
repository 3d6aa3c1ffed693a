"""The node configuration file (YAML) and the cluster-wide settings kept in the store.

Every model forbids unknown keys: a typo must stop the agent with a clear message
(see `validate.py`), never be silently ignored.

The models are msgspec Structs. pydantic did the same job at three times the memory: the agent is
a long-running process on every database host, and pydantic (with its compiled core and the
validators it builds) was 9 MB of its resident set (docs/benchmarks.md, footprint). Constraints
are `Annotated[..., Meta(...)]`; rules across fields live in `__post_init__`, whose ValueError
msgspec reports with the path of the offending mapping.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

from msgspec import Meta, field

from pgwarden.config.errors import ConfigError
from pgwarden.config.tls import ApiTls, ClientTls, TlsFiles
from pgwarden.config.validate import shown, unknown_keys, validate

# The cluster-wide settings, their base and the safety constants live in the core (which depends
# on nothing above it); named here too for the modules that read the whole configuration.
from pgwarden.core.settings import FENCE_BUDGET as FENCE_BUDGET
from pgwarden.core.settings import LEASE_MARGIN as LEASE_MARGIN
from pgwarden.core.settings import MIN_TTL as MIN_TTL
from pgwarden.core.settings import ClusterSettings as ClusterSettings
from pgwarden.core.settings import FailoverMode as FailoverMode
from pgwarden.core.settings import NonNegative, ParamValue, check_parameters, node_only
from pgwarden.core.settings import Strict as Strict
from pgwarden.core.settings import SyncMode as SyncMode
from pgwarden.tls.contexts import TlsPaths

Port = Annotated[int, Meta(ge=1, le=65535)]
Name = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.-]+$")]


class Credentials(Strict, frozen=True, kw_only=True):
    username: str
    password: str | None = None
    password_file: Path | None = None

    def __post_init__(self) -> None:
        if self.password is None and self.password_file is None:
            raise ValueError("give either password or password_file")

    def secret(self) -> str:
        if self.password is not None:
            return self.password
        assert self.password_file is not None
        try:
            return self.password_file.read_text().strip()
        except OSError as e:
            raise ValueError(f"cannot read password_file {self.password_file}: {e.strerror}") from e
        except UnicodeDecodeError:
            raise ValueError(f"password_file {self.password_file} is not UTF-8 text") from None


# The weakest PostgreSQL password we accept. Every member's superuser and replication passwords
# open a network-reachable server (replication connections come from other hosts), so the rule is
# the one most password policies start with: at least 8 characters, and not the user's own name
# (PostgreSQL's `postgres`/`postgres` was the old default). Anything richer (dictionaries, classes
# of characters) guesses at strength; `pgwarden local up` writes 16 random characters.
MIN_PASSWORD = 8


def password_problem(username: str, password: str) -> str | None:
    """Why `password` is too weak for `username`; None when it is acceptable."""
    if not password:
        return "the password is empty"
    if password == username:
        return "the password is the username"
    if len(password) < MIN_PASSWORD:
        return f"the password is shorter than {MIN_PASSWORD} characters"
    return None


class PgCredentials(Credentials, frozen=True, kw_only=True):
    """A PostgreSQL role pgwarden connects as: required, and with a password that is not weak
    (a password_file is checked when the node file is loaded, see load.py)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.password is not None and (problem := password_problem(self.username, self.password)):
            raise ValueError(f"{problem}; set a password of at least {MIN_PASSWORD} characters that is "
                             f"not the username (or password_file)")


class PostgresConfig(Strict, frozen=True, kw_only=True):
    listen_address: str = "127.0.0.1"
    port: Port = 5432
    connect_address: str | None = None  # host:port others use; default listen_address:port
    bin_dir: Path | None = None
    os_user: str = "postgres"
    parameters: dict[str, ParamValue] = field(default_factory=dict)
    # No defaults: a well-known password on a network-reachable server is no password.
    superuser: PgCredentials
    replication: PgCredentials
    pg_hba: list[str] = field(default_factory=list)  # extra pg_hba.conf lines
    # ssl = on with these files, hostssl in pg_hba.conf, and with cafile, replication, pg_rewind
    # and pg_basebackup connect with sslmode=verify-full (see docs/operations.md, TLS).
    tls: TlsFiles | None = None
    # A port on listen_address in front of this server for logical subscribers: it holds back
    # what a walsender sends until the synchronous standbys have it (15/16; pgwarden/gate).
    logical_gate_port: Port | None = None

    def __post_init__(self) -> None:
        if self.logical_gate_port is not None and self.logical_gate_port == self.port:
            raise ValueError(f"logical_gate_port {self.logical_gate_port} is PostgreSQL's own port; "
                             f"give the gate a port of its own")
        # The one place commands and code may be set (see NODE_ONLY_PARAMETERS); names still checked.
        check_parameters(self.parameters, cluster=False)

    def connect_host_port(self) -> tuple[str, int]:
        if self.connect_address:
            host, _, port = self.connect_address.rpartition(":")
            return host, int(port)
        return self.listen_address, self.port


class RestApiConfig(Strict, frozen=True, kw_only=True):
    listen_address: str = "127.0.0.1"
    port: Port = 8008
    connect_address: str | None = None
    # HTTP Basic credentials for every request that changes something (and GET /config, /cluster);
    # health checks, /status, /position and /history stay open (see api/auth.py). `ctl` sends them.
    authentication: Credentials | None = None
    # The explicit opt-out: an agent listening beyond loopback without authentication refuses to
    # start unless this is true (see config/exposure.py).
    insecure: bool = False
    # Connections served at once, each on a thread; more wait in the listen backlog (api/limits.py).
    max_connections: Annotated[int, Meta(ge=4, le=4096)] = 64
    # HTTPS (see config/tls.py); the node's calls to other members' APIs use it as a client too.
    tls: ApiTls | None = None

    def __post_init__(self) -> None:
        if self.authentication is not None and ":" in self.authentication.username:
            raise ValueError("authentication.username must not contain ':' (HTTP Basic cannot carry it)")

    def client_tls(self) -> TlsPaths | None:
        """How this node's tools and agent call members' APIs over https (None: no restapi.tls)."""
        return None if self.tls is None else self.tls.client_paths()

    def url(self) -> str:
        addr = self.connect_address or f"{self.listen_address}:{self.port}"
        return f"{'https' if self.tls else 'http'}://{addr}"


Hosts = Annotated[list[str], Meta(min_length=1)]


class EtcdConfig(Strict, frozen=True, kw_only=True):
    hosts: Hosts
    prefix: str = "/pgwarden"
    # etcd's own users (`etcdctl auth enable`): the agent authenticates and sends the token.
    authentication: Credentials | None = None
    tls: ClientTls | None = None  # https: the CA of etcd's certificate, and a client certificate


class ZooKeeperConfig(Strict, frozen=True, kw_only=True):
    hosts: Hosts
    prefix: str = "/pgwarden"
    # Digest authentication: the agent's sessions authenticate as this user and every node they
    # create carries an ACL for it alone.
    authentication: Credentials | None = None


def _check_addr(addr: str) -> str:
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"expected host:port, got {addr!r}")
    return addr


class RaftConfig(Strict, frozen=True, kw_only=True):
    """No external store: the agents (and witnesses) form a Raft group among themselves."""

    self_addr: str  # host:port this member's raft node listens on and others dial
    partner_addrs: Hosts  # host:port of every other member
    data_dir: Path | None = None  # raft journal dir (term, vote and log survive restarts)
    # A secret every member shares: pysyncobj encrypts and authenticates the raft traffic with
    # it (needs the `cryptography` package). Without it, anyone reaching the port joins in.
    password_file: Path | None = None

    def __post_init__(self) -> None:
        for a in (self.self_addr, *self.partner_addrs):
            _check_addr(a)
        if self.self_addr in self.partner_addrs:
            raise ValueError("partner_addrs must not contain self_addr")
        if len(set(self.partner_addrs)) != len(self.partner_addrs):
            raise ValueError("partner_addrs lists an address twice")


class StoreConfig(Strict, frozen=True, kw_only=True):
    etcd: EtcdConfig | None = None
    zookeeper: ZooKeeperConfig | None = None
    raft: RaftConfig | None = None

    def __post_init__(self) -> None:
        chosen = [k for k in ("etcd", "zookeeper", "raft") if getattr(self, k) is not None]
        if len(chosen) != 1:
            raise ValueError("choose exactly one store backend: etcd, zookeeper or raft")


class Tags(Strict, frozen=True, kw_only=True):
    nofailover: bool = False
    noloadbalance: bool = False
    nosync: bool = False
    replicatefrom: str | None = None
    failover_priority: NonNegative = 1

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__struct_fields__}


class PgBouncerConfig(Strict, frozen=True, kw_only=True):
    """A PgBouncer the agent keeps pointed at the primary (see `pgwarden.routing.router`)."""

    admin: Credentials  # a user in PgBouncer's admin_users
    config_file: Path  # pgbouncer.ini, whose [databases] lines the leader rewrites
    host: str = "127.0.0.1"
    port: Port = 6432
    # [databases] entries to retarget, PAUSE and RESUME
    databases: Hosts = field(default_factory=lambda: ["postgres"])
    pause_timeout: Annotated[float, Meta(gt=0)] = 2.0  # max wait (s) for open transactions at switchover


class LogConfig(Strict, frozen=True, kw_only=True):
    level: str = "INFO"
    file: Path | None = None


class NodeConfig(Strict, frozen=True, kw_only=True):
    cluster: Name
    name: Name
    data_dir: Path
    store: StoreConfig
    postgresql: PostgresConfig
    restapi: RestApiConfig = field(default_factory=RestApiConfig)
    tags: Tags = field(default_factory=Tags)
    log: LogConfig = field(default_factory=LogConfig)
    pgbouncer: PgBouncerConfig | None = None
    # Seeds for the cluster-wide settings (see ClusterSettings); only the bootstrapping node's
    # values reach the store.
    timing: dict[str, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.initial_settings()  # raises with the bad key named

    def initial_settings(self) -> ClusterSettings:
        bad = set(self.timing) - {"ttl", "loop_wait", "retry_timeout"}
        if bad:
            raise ValueError(f"'timing': unknown key(s) {sorted(map(shown, bad))}; "
                             f"valid: ttl, loop_wait, retry_timeout")
        if unknown := unknown_keys(ClusterSettings, self.settings, ("settings",)):
            raise ValueError("; ".join(unknown))  # one line, each key with its path
        merged: dict[str, Any] = {**self.settings, **self.timing}
        # The node's own parameters seed the cluster's, except those only a node's file may set:
        # they stay this node's (postgres/conf.py applies them), never reaching the store.
        seed = {k: v for k, v in self.postgresql.parameters.items() if not node_only(k)}
        if seed:
            merged["parameters"] = {**seed, **merged.get("parameters", {})}
        try:
            return validate(ClusterSettings, merged, "settings")
        except ConfigError as e:  # msgspec reports a ValueError from here, at the top level
            raise ValueError(self._settings_origin(str(e).removeprefix("settings: "))) from None

    def _settings_origin(self, msg: str) -> str:
        """A problem of the merged settings, named by the node file key it came from."""
        if m := re.match(r"'([^']*)': (.*)", msg, re.S):
            head = m.group(1).split(".")[0]
            origin = "timing" if head in self.timing else (
                "postgresql" if head == "parameters" and "parameters" not in self.settings else "settings")
            return f"'{origin}.{m.group(1)}': {m.group(2)}"
        origin = "timing" if any(re.search(rf"\b{k}\b", msg) for k in self.timing) else "settings"
        return f"'{origin}': {msg}"
