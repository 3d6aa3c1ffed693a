"""The contract every cluster driver meets, so one scenario runs unchanged against any HA tool."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

# synchronous_mode of a benchmark cluster: off (asynchronous), on (each commit waits for the named
# synchronous standby), quorum (each commit waits for synchronous_node_count of the voters).
SyncMode = Literal["off", "on", "quorum"]


@dataclass(frozen=True)
class Timing:
    """HA timing of one preset, in seconds."""

    label: str  # "default" or "fastest": the ratio column pairs rows by this label
    ttl: float
    loop_wait: float
    retry_timeout: float

    def describe(self) -> str:
        return f"ttl={self.ttl:g} loop_wait={self.loop_wait:g} retry_timeout={self.retry_timeout:g}"


class ClusterError(RuntimeError):
    """The cluster did not do what a scenario asked within its deadline."""


class ClusterDriver(Protocol):
    name: str
    presets: dict[str, Timing]
    keep: bool  # keep the run directory (logs, data) after down(): set once a run failed

    def up(self, nodes: int = 3, sync: SyncMode = "off", timing: Timing | None = None) -> None:
        """Start a fresh cluster from nothing in synchronous_mode `sync` and return once it is
        healthy (in a synchronous mode: once the tool promises a synchronous standby or quorum)."""

    def dsn(self) -> str:
        """libpq multi-host connection string with credentials (the workload adds read-write)."""

    def primary(self) -> str:
        """Name of the current primary member."""

    def kill_primary(self) -> None:
        """SIGKILL the primary's agent and postmaster (and the postmaster's children) together."""

    def partition_primary(self) -> None:
        """Cut the primary off from the store and the other nodes; the client still reaches it.
        Only drivers on a private network (ip netns) can; the others raise ClusterError."""

    def switchover(self, candidate: str | None = None) -> None:
        """Planned switchover through the tool's own CLI; returns when the tool says it is done."""

    def heal(self) -> None:
        """Start again every agent this driver killed, so the cluster can return to full strength."""

    def wait_healthy(self, timeout: float) -> None:
        """Wait for one primary and every other member streaming from it (and, in a synchronous
        mode, the synchronous promise in place: see `up`)."""

    def leader_changes(self) -> int:
        """Leader changes so far, from the tool's own history (for the false-failover scenario)."""

    def enable_failsafe(self) -> None:
        """Before `up`: the tool's store-outage failsafe on (pgwarden `failsafe: on`, Patroni
        `failsafe_mode: true`); `up` returns once it is armed."""

    def store_pid(self) -> int:
        """PID of the store process (etcd) the cluster uses, for the store-outage scenario."""

    def agent_pids(self) -> list[int]:
        """PIDs of the running agent processes (the agents only, not PostgreSQL)."""

    def down(self) -> None:
        """Stop everything this driver started, by PID, and remove the data."""
