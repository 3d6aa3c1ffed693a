"""A simulated PostgreSQL server and fencer, implementing the executor's ports
(`pgwarden.agent.ports`): role, timeline, LSN and the timelines it came from, the synchronous
setting it enforces, and a fencer that stops whatever postmaster runs past its armed deadline.

Every change a writable primary could notice calls `on_change`, so the world checks its
invariants after each effect, not only after each action."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

from pgwarden.config.schema import ClusterSettings
from pgwarden.core.logical import LogicalChange
from pgwarden.core.model import NO_SYNC, SyncConfig
from pgwarden.postgres.controller import PostgresError, Role, StopMode, UpstreamTuple

_pids = itertools.count(1000)


@dataclass
class SimPostgres:
    name: str
    # The world: the server named `host` (clone and rewind sources), and the invariant check.
    peer: Callable[[str], SimPostgres]
    on_change: Callable[[str], None]
    elapse: Callable[[float], None]  # time passing while a call runs (the world's clock)
    role: str = "replica"  # "primary" | "replica" | "stopped"
    timeline: int = 1
    lsn: int = 0
    lineage: list[tuple[int, int]] = field(default_factory=list)  # (timeline, switch lsn) it came from
    upstream: str | None = None
    was_primary: bool = False  # pg_control: "in production" at the last stop
    pid: int | None = None
    sync: SyncConfig = NO_SYNC  # synchronous_standby_names, as written and (while running) live
    sync_applied_lsn: int | None = None
    unhealthy: bool = False  # its health query fails (peers still read it)
    slots: frozenset[str] = frozenset()
    promote_takes: float = 0.0  # seconds pg_promote runs after the server left recovery

    def __post_init__(self) -> None:
        self.pid = next(_pids)

    @property
    def running(self) -> bool:
        return self.role != "stopped"

    def holds(self, timeline: int, lsn: int) -> bool:
        """Is commit `lsn` of `timeline` in this server's history?"""
        if self.timeline == timeline:
            return self.lsn >= lsn
        return any(tl == timeline and sw >= lsn for tl, sw in self.lineage)

    def crash(self) -> None:
        """The machine dies: no shutdown checkpoint, pg_control still says what it was."""
        self._down("crashed")

    def _down(self, how: str) -> None:
        if self.role == "primary":
            self.was_primary = True
        if self.role != "stopped":
            self.role, self.pid = "stopped", None
            self.on_change(f"{self.name} {how}")

    # -- PostgresPort ------------------------------------------------------------------------
    def start(self, *, role: Role, upstream: UpstreamTuple | None, wait_timeout: float) -> None:
        if self.running:
            return
        if role == "primary" and not self.was_primary:
            raise PostgresError("refusing to start a standby's data directory as a primary")
        self.role, self.pid = role, next(_pids)
        self.upstream = upstream[0] if role == "replica" and upstream else None
        self.was_primary = False
        self.sync_applied_lsn = self.lsn
        self.on_change(f"{self.name} started as {role}")

    def stop(self, mode: StopMode, timeout: float) -> None:
        self._down(f"stopped ({mode})")

    def promote(self, timeout: float, sync_after: SyncConfig | None = None) -> None:
        if self.role == "primary":
            return
        if self.role != "replica":
            raise PostgresError("cannot promote: not running")
        self.sync = sync_after if sync_after is not None else NO_SYNC
        self.lineage = [*self.lineage, (self.timeline, self.lsn)]
        self.timeline += 1
        self.role, self.upstream, self.was_primary = "primary", None, False
        self.sync_applied_lsn = self.lsn
        self.on_change(f"{self.name} promoted to timeline {self.timeline}")
        if self.promote_takes:
            self.elapse(self.promote_takes)

    def reconfigure(self, upstream: UpstreamTuple | None, sync: SyncConfig,
                    settings: ClusterSettings, timeout: float = 5.0) -> bool:
        if self.role == "replica":
            self.upstream = upstream[0] if upstream else None
        self.sync = sync
        return False

    def set_sync(self, sync: SyncConfig, timeout: float = 5.0) -> None:
        if sync != self.sync or self.sync_applied_lsn is None:
            self.sync, self.sync_applied_lsn = sync, self.lsn if self.running else None

    def ensure_slots(self, names: set[str], timeout: float = 5.0) -> None:
        self.slots = frozenset(names)

    def postmaster_pid(self) -> int | None:
        return self.pid

    def bootstrap(self, timeout: float = 60.0) -> str:
        raise PostgresError("the simulated cluster starts initialised")

    def clone(self, source_host: str, source_port: int, timeout: float, dsn: str = "") -> None:
        self._copy_from(source_host)
        self.on_change(f"{self.name} cloned from {source_host}")

    def rewind(self, source_host: str, source_port: int, timeout: float, dsn: str = "") -> bool:
        if self.running:
            raise PostgresError("pg_rewind needs a stopped server")
        self._copy_from(source_host)
        self.on_change(f"{self.name} rewound from {source_host}")
        return True

    def _copy_from(self, host: str) -> None:
        src = self.peer(host)
        if not src.running:
            raise PostgresError(f"cannot connect to {host}")
        self.timeline, self.lsn, self.lineage = src.timeline, src.lsn, list(src.lineage)
        self.was_primary = False

    def system_id(self, timeout: float = 30.0) -> str:
        raise PostgresError("the simulated servers have no pg_control (no standby sites here)")

    def wipe(self) -> None:
        self.timeline, self.lsn, self.lineage = 1, 0, []

    def read_timeline_history(self, timeline: int) -> list[tuple[int, int, str]]:
        return [(tl, sw, "promoted") for tl, sw in self.lineage if tl < timeline]

    # Logical replication is not simulated: no publications, subscriptions or logical slots exist.
    def apply_logical(self, change: LogicalChange, timeout: float) -> None:
        raise AssertionError("the simulation declares no logical replication")

    def copy_logical_slots(self, names: frozenset[str], host: str, port: int, timeout: float) -> list[str]:
        return []

    def advance_logical_slots(self, targets: tuple[tuple[str, int], ...], timeout: float) -> None:
        pass

    def set_standby_slots(self, members: frozenset[str], timeout: float) -> None:
        pass

    def drop_logical_slots(self, names: frozenset[str], timeout: float) -> None:
        pass
@dataclass
class SimFencer:
    """The separate fencer process: knows only its armed deadline (rule 13)."""

    works: bool = True
    deadline: float = 0.0
    _armed: bool = False

    def arm(self, deadline: float, postmaster_pid: int | None) -> None:
        self._armed, self.deadline = True, deadline

    def disarm(self) -> None:
        self._armed = False

    @property
    def armed(self) -> bool:
        return self._armed

    def due(self, now: float) -> bool:
        return self.works and self._armed and now >= self.deadline
