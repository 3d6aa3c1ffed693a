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

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from msgspec import Meta, Struct, field

from pgwarden.config.errors import ConfigError
from pgwarden.config.validate import validate


class Strict(Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Base of every model: unknown keys refused, instances immutable."""


Port = Annotated[int, Meta(ge=1, le=65535)]
Name = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.-]+$")]
NonNegative = Annotated[int, Meta(ge=0)]
ParamValue = str | int | float | bool


class SyncMode(StrEnum):
    OFF = "off"
    ON = "on"
    QUORUM = "quorum"


class FailoverMode(StrEnum):
    AUTOMATIC = "automatic"
    MANUAL = "manual"


# etcd refuses leases shorter than ~2 s with its default heartbeat; the fencer needs
# LEASE_MARGIN seconds to stop PostgreSQL before the store lets anyone else lead.
MIN_TTL = 2.0
LEASE_MARGIN = 0.5
# Time the agent keeps for itself to stop PostgreSQL before its own lease deadline.
FENCE_BUDGET = 0.25


class ClusterSettings(Strict, frozen=True, kw_only=True):
    """Cluster-wide settings. Seeded into the store by the node that bootstraps the cluster;
    afterwards the store's copy wins and `pgwarden ctl edit-config` changes it."""

    ttl: float = 4.0  # leader lease length, seconds
    loop_wait: float = 1.0  # seconds between HA loop runs
    retry_timeout: float = 1.0  # deadline of one store or PostgreSQL call, seconds
    maximum_lag_on_failover: NonNegative = 1048576  # bytes a candidate may lag
    synchronous_mode: SyncMode = SyncMode.OFF
    synchronous_node_count: Annotated[int, Meta(ge=1)] = 1
    synchronous_mode_strict: bool = False
    failover_mode: FailoverMode = FailoverMode.AUTOMATIC
    paused: bool = False
    use_pg_rewind: bool = True
    parameters: dict[str, ParamValue] = field(default_factory=dict)

    @property
    def synchronous(self) -> bool:
        """Some synchronous mode (on or quorum) is asked for: the one place that says so."""
        return self.synchronous_mode != SyncMode.OFF

    def __post_init__(self) -> None:
        if self.ttl < MIN_TTL:
            raise ValueError(f"ttl must be at least {MIN_TTL:g} s (etcd's shortest lease); got {self.ttl:g}")
        if self.loop_wait < 0.1:
            raise ValueError(f"loop_wait must be at least 0.1 s; got {self.loop_wait:g}")
        if self.retry_timeout < 0.2:
            raise ValueError(f"retry_timeout must be at least 0.2 s; got {self.retry_timeout:g}")
        # The leader must be able to miss one renewal and still stop writes itself before the
        # lease deadline (sent_at + ttl - LEASE_MARGIN), with FENCE_BUDGET to do it.
        if 2 * self.loop_wait + LEASE_MARGIN + FENCE_BUDGET >= self.ttl:
            raise ValueError(
                f"timing: ttl must exceed 2 * loop_wait + {LEASE_MARGIN + FENCE_BUDGET:g} "
                f"(ttl={self.ttl:g}, loop_wait={self.loop_wait:g}); raise ttl or lower loop_wait"
            )
        # A leader must be able to fail one renewal and still renew again before the lease ends.
        if self.loop_wait + 2 * self.retry_timeout > self.ttl:
            raise ValueError(
                f"timing: loop_wait + 2 * retry_timeout must not exceed ttl "
                f"({self.loop_wait:g} + 2 * {self.retry_timeout:g} > {self.ttl:g}); "
                f"raise ttl or lower loop_wait/retry_timeout"
            )


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


class PostgresConfig(Strict, frozen=True, kw_only=True):
    listen_address: str = "127.0.0.1"
    port: Port = 5432
    connect_address: str | None = None  # host:port others use; default listen_address:port
    bin_dir: Path | None = None
    os_user: str = "postgres"
    parameters: dict[str, ParamValue] = field(default_factory=dict)
    superuser: Credentials = field(
        default_factory=lambda: Credentials(username="postgres", password="postgres"))
    replication: Credentials = field(
        default_factory=lambda: Credentials(username="replicator", password="replicator"))
    pg_hba: list[str] = field(default_factory=list)  # extra pg_hba.conf lines

    def connect_host_port(self) -> tuple[str, int]:
        if self.connect_address:
            host, _, port = self.connect_address.rpartition(":")
            return host, int(port)
        return self.listen_address, self.port


class RestApiConfig(Strict, frozen=True, kw_only=True):
    listen_address: str = "127.0.0.1"
    port: Port = 8008
    connect_address: str | None = None

    def url(self) -> str:
        addr = self.connect_address or f"{self.listen_address}:{self.port}"
        return f"http://{addr}"


Hosts = Annotated[list[str], Meta(min_length=1)]


class EtcdConfig(Strict, frozen=True, kw_only=True):
    hosts: Hosts
    prefix: str = "/pgwarden"


class ZooKeeperConfig(Strict, frozen=True, kw_only=True):
    hosts: Hosts
    prefix: str = "/pgwarden"


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
    postgresql: PostgresConfig = field(default_factory=PostgresConfig)
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
            raise ValueError(f"timing: unknown key(s) {sorted(bad)}; valid: ttl, loop_wait, retry_timeout")
        merged: dict[str, Any] = {**self.settings, **self.timing}
        if self.postgresql.parameters:
            merged["parameters"] = {**self.postgresql.parameters, **merged.get("parameters", {})}
        try:
            return validate(ClusterSettings, merged, "settings")
        except ConfigError as e:  # msgspec reports a ValueError from here with its path
            raise ValueError(str(e).removeprefix("settings: ")) from None
