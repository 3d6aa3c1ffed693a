"""What the executor needs of the world around it, as narrow ports: the local PostgreSQL, the
fencer and the PgBouncer router. The real classes (`PostgresController`, `fence.supervisor.Fencer`,
`PgBouncerRouter`) satisfy them; the scenario tests run the real executor against in-memory ones
(`tests/core/sim`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from pgwarden.config.schema import ClusterSettings
from pgwarden.core.logical import LogicalChange
from pgwarden.core.model import SyncConfig
from pgwarden.postgres.controller import Role, StopMode, UpstreamTuple

Clock = Callable[[], float]
"""A clock read: `time.monotonic` for deadlines, `time.time` for wall times (the default)."""


class PostgresPort(Protocol):
    """The local PostgreSQL as the executor drives it. Failures raise `PostgresError` (or OSError)."""

    def start(self, *, role: Role, upstream: UpstreamTuple | None, wait_timeout: float) -> None: ...

    def stop(self, mode: StopMode, timeout: float) -> None: ...

    def promote(self, timeout: float, sync_after: SyncConfig | None = None) -> None: ...

    def reconfigure(self, upstream: UpstreamTuple | None, sync: SyncConfig,
                    settings: ClusterSettings, timeout: float = 5.0) -> bool: ...

    def set_sync(self, sync: SyncConfig, timeout: float = 5.0) -> None: ...

    def ensure_slots(self, names: set[str], timeout: float = 5.0) -> None: ...

    def postmaster_pid(self) -> int | None: ...

    def bootstrap(self, timeout: float = 60.0) -> str: ...

    def clone(self, source_host: str, source_port: int, timeout: float, dsn: str = "") -> None: ...

    def rewind(self, source_host: str, source_port: int, timeout: float, dsn: str = "") -> bool: ...

    def system_id(self, timeout: float = 30.0) -> str: ...

    def wipe(self) -> None: ...

    def read_timeline_history(self, timeline: int) -> list[tuple[int, int, str]]: ...

    # Logical replication (issue 11): declared publications/subscriptions and slot copies.
    def apply_logical(self, change: LogicalChange, timeout: float) -> None: ...

    def copy_logical_slots(self, names: frozenset[str], host: str, port: int,
                           timeout: float) -> list[str]: ...

    def advance_logical_slots(self, targets: tuple[tuple[str, int], ...], timeout: float) -> None: ...

    def set_standby_slots(self, members: frozenset[str], timeout: float) -> None: ...

    def drop_logical_slots(self, names: frozenset[str], timeout: float) -> None: ...


class FencerPort(Protocol):
    """The separate process that stops the postmaster past `deadline` while armed (rule 13)."""

    def arm(self, deadline: float, postmaster_pid: int | None) -> None: ...

    def disarm(self) -> None: ...

    @property
    def armed(self) -> bool: ...


class RouterPort(Protocol):
    """PgBouncer in front of us: paused for a switchover within a budget."""

    @property
    def pause_timeout(self) -> float: ...

    def hand_over(self, budget: float) -> bool: ...
