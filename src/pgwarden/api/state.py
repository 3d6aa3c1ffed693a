"""What the agent publishes for the REST API each loop (NodeState), and the narrow set of local
commands the API may ask the agent to run. The API reads these; it never reaches into the HA loop.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from pgwarden.core.model import NO_SYNC, ClusterView, LeaderCheck, MemberInfo, PeerReading, SyncConfig

if TYPE_CHECKING:
    from pgwarden.routing.router import RouterView


@dataclass(frozen=True)
class NodeState:
    """One loop's outcome as the API serves it. Immutable, so a reader never sees half an update."""

    member: MemberInfo  # this node now (role, state, running, timeline, lsn, tags, pids, version ...)
    cluster: ClusterView | None  # last store snapshot (None until the store first answered)
    store_ok: bool  # the last store call succeeded
    holds_lease: bool  # this node holds the leader lease right now
    last_loop_at: float  # monotonic time the HA loop last completed (for /liveness)
    started_at: float  # epoch seconds the agent started
    pg_sync: SyncConfig = NO_SYNC  # synchronous_standby_names as applied on this node (primary)
    message: str = ""  # what the loop is doing ("streaming from node1", "promoting", ...)
    start_error: str = ""  # why PostgreSQL last failed to start (its FATAL line), until it starts
    logical_error: str | None = None  # the last declared publication/subscription change that failed
    cluster_at: float | None = None  # monotonic time `cluster` was read from the store
    pg_log: str = ""  # this node's PostgreSQL log file, for operators told to look at it
    pgbouncer: RouterView | None = None  # the managed PgBouncer, when this node has one


class StateHolder:
    """Hands the latest NodeState from the agent thread to the API thread.

    `set` replaces the whole object; `get` returns the latest one (None before the first loop)."""

    def __init__(self, initial: NodeState | None = None) -> None:
        self._lock = threading.Lock()
        self._state = initial

    def set(self, state: NodeState) -> None:
        with self._lock:
            self._state = state

    def get(self) -> NodeState | None:
        with self._lock:
            return self._state


class CommandRefused(Exception):
    """The agent cannot run the requested command now; the message says why."""


class Commands(Protocol):
    """Local operations the API may request. Implementations only queue the work for the agent's
    loop and return at once (they are called from the API's thread); they return a message for
    the operator or raise CommandRefused."""

    def request_restart(self) -> str: ...

    def request_reinitialize(self, force: bool) -> str: ...

    def read_position(self, timeout: float) -> PeerReading:
        """Our PostgreSQL's WAL position read now (not the last loop's), for a peer's promotion
        decision; `running=False` when PostgreSQL does not answer."""
        ...

    def check_leader(self, leader: str, timeout: float) -> LeaderCheck:
        """Rule 16: does `leader`'s node refuse connections to us now, and is our WAL receiver
        attached to it? (agent/crash_check.py)"""
        ...

    def failsafe_confirm(self, leader: str, timeline: int | None, ttl: float) -> tuple[bool, str]:
        """Rule 17: confirm `leader` (we too cannot reach the store and follow it on `timeline`),
        binding ourselves for `ttl` and a margin; (False, why) when we do not."""
        ...

    def failsafe_vote(self, candidate: str, ttl: float, round_id: str = "") -> tuple[bool, str]:
        """Rule 17: promise a leaderless candidate not to confirm any leader for `ttl` and a
        margin; (False, why) while a confirmation of ours is in force. `round_id` names the
        candidate's round, for `failsafe_release`."""
        ...

    def failsafe_release(self, candidate: str, round_id: str) -> tuple[bool, str]:
        """Rule 17: the candidate hands back the vote we gave it in `round_id`."""
        ...
