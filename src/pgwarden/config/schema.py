"""The node configuration file (YAML) and the cluster-wide settings kept in the store.

Every model forbids unknown keys: a typo must stop the agent with a clear message
(see `load.py`), never be silently ignored.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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


class ClusterSettings(Strict):
    """Cluster-wide settings. Seeded into the store by the node that bootstraps the cluster;
    afterwards the store's copy wins and `pgwarden ctl edit-config` changes it."""

    ttl: float = Field(4.0, description="leader lease length, seconds")
    loop_wait: float = Field(1.0, description="seconds between HA loop runs")
    retry_timeout: float = Field(1.0, description="deadline of one store or PostgreSQL call, seconds")
    maximum_lag_on_failover: int = Field(1048576, ge=0, description="bytes a candidate may lag")
    synchronous_mode: SyncMode = SyncMode.OFF
    synchronous_node_count: int = Field(1, ge=1)
    synchronous_mode_strict: bool = False
    failover_mode: FailoverMode = FailoverMode.AUTOMATIC
    paused: bool = False
    use_pg_rewind: bool = True
    parameters: dict[str, str | int | float | bool] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _timing(self) -> ClusterSettings:
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
        return self


class Credentials(Strict):
    username: str
    password: str | None = None
    password_file: Path | None = None

    @model_validator(mode="after")
    def _one_secret(self) -> Credentials:
        if self.password is None and self.password_file is None:
            raise ValueError("give either password or password_file")
        return self

    def secret(self) -> str:
        if self.password is not None:
            return self.password
        assert self.password_file is not None
        try:
            return self.password_file.read_text().strip()
        except OSError as e:
            raise ValueError(f"cannot read password_file {self.password_file}: {e.strerror}") from e


class PostgresConfig(Strict):
    listen_address: str = "127.0.0.1"
    port: int = Field(5432, ge=1, le=65535)
    connect_address: str | None = Field(None, description="host:port others use; default listen:port")
    bin_dir: Path | None = None
    os_user: str = "postgres"
    parameters: dict[str, str | int | float | bool] = Field(default_factory=dict)
    superuser: Credentials = Credentials(username="postgres", password="postgres")
    replication: Credentials = Credentials(username="replicator", password="replicator")
    pg_hba: list[str] = Field(default_factory=list, description="extra pg_hba.conf lines")

    def connect_host_port(self) -> tuple[str, int]:
        if self.connect_address:
            host, _, port = self.connect_address.rpartition(":")
            return host, int(port)
        return self.listen_address, self.port


class RestApiConfig(Strict):
    listen_address: str = "127.0.0.1"
    port: int = Field(8008, ge=1, le=65535)
    connect_address: str | None = None

    def url(self) -> str:
        addr = self.connect_address or f"{self.listen_address}:{self.port}"
        return f"http://{addr}"


class EtcdConfig(Strict):
    hosts: list[str] = Field(min_length=1)
    prefix: str = "/pgwarden"


class ZooKeeperConfig(Strict):
    hosts: list[str] = Field(min_length=1)
    prefix: str = "/pgwarden"


def _check_addr(addr: str) -> str:
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"expected host:port, got {addr!r}")
    return addr


class RaftConfig(Strict):
    """No external store: the agents (and witnesses) form a Raft group among themselves."""

    self_addr: str = Field(description="host:port this member's raft node listens on and others dial")
    partner_addrs: list[str] = Field(min_length=1, description="host:port of every other member")
    data_dir: Path | None = Field(None, description="raft journal dir (term, vote and log survive restarts)")

    @model_validator(mode="after")
    def _addrs(self) -> RaftConfig:
        for a in (self.self_addr, *self.partner_addrs):
            _check_addr(a)
        if self.self_addr in self.partner_addrs:
            raise ValueError("partner_addrs must not contain self_addr")
        if len(set(self.partner_addrs)) != len(self.partner_addrs):
            raise ValueError("partner_addrs lists an address twice")
        return self


class StoreConfig(Strict):
    etcd: EtcdConfig | None = None
    zookeeper: ZooKeeperConfig | None = None
    raft: RaftConfig | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> StoreConfig:
        chosen = [k for k in ("etcd", "zookeeper", "raft") if getattr(self, k) is not None]
        if len(chosen) != 1:
            raise ValueError("choose exactly one store backend: etcd, zookeeper or raft")
        return self


class Tags(Strict):
    nofailover: bool = False
    noloadbalance: bool = False
    nosync: bool = False
    replicatefrom: str | None = None
    failover_priority: int = Field(1, ge=0)

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(exclude_defaults=False)


class PgBouncerConfig(Strict):
    """A PgBouncer the agent keeps pointed at the primary (see `pgwarden.routing.router`)."""

    host: str = "127.0.0.1"
    port: int = Field(6432, ge=1, le=65535)
    admin: Credentials = Field(description="a user in PgBouncer's admin_users")
    databases: list[str] = Field(default_factory=lambda: ["postgres"], min_length=1,
                                 description="[databases] entries to retarget, PAUSE and RESUME")
    config_file: Path = Field(description="pgbouncer.ini, whose [databases] lines the leader rewrites")
    pause_timeout: float = Field(2.0, gt=0, description="max wait (s) for open transactions at switchover")


class LogConfig(Strict):
    level: str = "INFO"
    file: Path | None = None


class NodeConfig(Strict):
    cluster: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    data_dir: Path
    postgresql: PostgresConfig = PostgresConfig()
    restapi: RestApiConfig = RestApiConfig()
    store: StoreConfig
    tags: Tags = Tags()
    log: LogConfig = LogConfig()
    pgbouncer: PgBouncerConfig | None = None
    # Seeds for the cluster-wide settings (see ClusterSettings); only the bootstrapping node's
    # values reach the store.
    timing: dict[str, float] = Field(default_factory=dict)
    settings: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _seed_is_valid(self) -> NodeConfig:
        self.initial_settings()  # raises with the bad key named
        return self

    def initial_settings(self) -> ClusterSettings:
        bad = set(self.timing) - {"ttl", "loop_wait", "retry_timeout"}
        if bad:
            raise ValueError(f"timing: unknown key(s) {sorted(bad)}; valid: ttl, loop_wait, retry_timeout")
        merged: dict[str, Any] = {**self.settings, **self.timing}
        if self.postgresql.parameters:
            merged["parameters"] = {**self.postgresql.parameters, **merged.get("parameters", {})}
        return ClusterSettings.model_validate(merged)
