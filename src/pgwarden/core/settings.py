"""The cluster-wide settings the store holds (desired state every member reads) and the safety
timing constants the decision core and the lease keeper share (SAFETY rules 2, 13, 15).

msgspec Structs, like the node configuration in `config/schema.py`, which builds on `Strict`.
Unknown keys are refused; rules across fields live in `__post_init__`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Literal

from msgspec import Meta, Struct, field

from pgwarden.core.logical import PublicationSpec, SubscriptionSpec, check_unique


class Strict(Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Base of every model: unknown keys refused, instances immutable."""


NonNegative = Annotated[int, Meta(ge=0)]
ParamValue = str | int | float | bool


class SyncMode(StrEnum):
    OFF = "off"
    ON = "on"
    QUORUM = "quorum"


class FailoverMode(StrEnum):
    AUTOMATIC = "automatic"
    MANUAL = "manual"


# PostgreSQL parameters that run commands or load code: whoever can set them runs anything as the
# PostgreSQL OS user. The cluster settings (the store's document, which PATCH /config and
# `ctl edit-config` write) cannot hold them; only a node's own file (postgresql.parameters) can.
# Any other `*_command` too; `include*` are postgresql.conf directives that would read another file.
NODE_ONLY_PARAMETERS = frozenset({
    "archive_command", "restore_command", "archive_cleanup_command", "recovery_end_command",
    "ssl_passphrase_command", "archive_library", "shared_preload_libraries", "local_preload_libraries",
    "session_preload_libraries", "dynamic_library_path", "jit_provider", "extension_control_path",
    "include", "include_dir", "include_if_exists",
})
NODE_FILE_KEY = "postgresql.parameters"
# What postgresql.conf's lexer reads as a name (ID or ID.ID); anything else would change its syntax.
_PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?")


def node_only(name: str) -> bool:
    """Whether only a node's own file may set this parameter (names are case-insensitive)."""
    lower = name.lower()
    return lower in NODE_ONLY_PARAMETERS or lower.endswith("_command")


def check_parameters(params: Mapping[str, ParamValue], *, cluster: bool) -> None:
    """ValueError for a name postgresql.conf would not read as one, a string value with a line
    break or NUL (it would end the line early), and, in the `cluster` settings, a node_only one."""
    for name, value in params.items():
        if not _PARAM_NAME.fullmatch(name):
            raise ValueError(f"parameters: {name!r} is not a PostgreSQL parameter name")
        if isinstance(value, str) and any(c in value for c in "\n\r\0"):
            raise ValueError(f"parameters.{name}: a value cannot contain a line break or NUL")
        if cluster and node_only(name):
            raise ValueError(
                f"parameters.{name} runs a command or loads code, so the cluster settings cannot set "
                f"it (whoever can change them could run anything as the PostgreSQL user); set it in "
                f"each node's own file under {NODE_FILE_KEY}")


# etcd refuses leases shorter than ~2 s with its default heartbeat; the fencer needs
# LEASE_MARGIN seconds to stop PostgreSQL before the store lets anyone else lead.
MIN_TTL = 2.0
LEASE_MARGIN = 0.5
# Time the agent keeps for itself to stop PostgreSQL before its own lease deadline.
FENCE_BUDGET = 0.25


class StandbyCluster(Strict, frozen=True, kw_only=True):
    """This cluster is a standby site of another (see core/standby.py, docs/multi-site.md): its
    leader is a standby leader streaming from `source`, a libpq DSN (multi-host with
    target_session_attrs=read-write follows the source site's failovers; no password: the
    node's passfile supplies it), through `primary_slot_name` when given."""

    source: Annotated[str, Meta(min_length=1)]
    primary_slot_name: Annotated[str, Meta(pattern=r"^[a-z0-9_]{1,63}$")] | None = None
    # Refused (see __post_init__): named so the error can say where it belongs instead.
    restore_command: str | None = None

    def __post_init__(self) -> None:
        if any(c in self.source for c in "\n\r\0"):
            raise ValueError("standby_cluster.source: a DSN cannot contain a line break or NUL")
        if "password" in self.source.lower():
            raise ValueError("standby_cluster.source must not carry a password (the store is readable "
                             "through GET /config); the node's passfile supplies the replication password")
        if self.restore_command is not None:
            # The settings are writable through PATCH /config and `ctl edit-config`: a command here
            # would let whoever can change them run anything as the PostgreSQL OS user.
            raise ValueError(
                "standby_cluster.restore_command runs a command, so the cluster settings cannot hold "
                f"it; set restore_command in each standby-site node's own file under {NODE_FILE_KEY}")


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
    # Keep writing through a store outage while a majority of members confirm (core/failsafe.py).
    # `on`/`off` or true/false; YAML reads an unquoted on/off as a boolean already.
    failsafe: bool | Literal["on", "off"] = False
    parameters: dict[str, ParamValue] = field(default_factory=dict)
    # Set: this cluster is a standby site (core/standby.py). Removed by `ctl promote-cluster`.
    standby_cluster: StandbyCluster | None = None
    # Physical slots the leader keeps besides its members' (a standby site's primary_slot_name).
    permanent_slots: list[Annotated[str, Meta(pattern=r"^[a-z0-9_]{1,63}$")]] = field(default_factory=list)
    # Declared logical replication, which the leader reconciles (core/logical.py).
    publications: tuple[PublicationSpec, ...] = ()
    subscriptions: tuple[SubscriptionSpec, ...] = ()

    @property
    def synchronous(self) -> bool:
        """Some synchronous mode (on or quorum) is asked for: the one place that says so."""
        return self.synchronous_mode != SyncMode.OFF

    @property
    def failsafe_on(self) -> bool:
        """The majority failsafe is asked for (`failsafe: on` or `true`)."""
        return self.failsafe is True or self.failsafe == "on"

    def __post_init__(self) -> None:
        check_parameters(self.parameters, cluster=True)
        check_unique(self.publications, self.subscriptions)
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
