"""The member document an agent publishes under its key and serves at GET /status, built from
its latest PostgreSQL reading. It remembers the logical slots last read, so a loop that did not
read them still publishes them."""

from __future__ import annotations

import os

from pgwarden import __version__
from pgwarden.core.model import DataState, Me, MemberInfo, PgView, Role


class MemberCard:
    def __init__(self, me: Me, gate_port: int | None) -> None:
        self.me = me
        self.gate_port = gate_port
        self._slots: tuple[tuple[str, int], ...] = ()
        self._native: tuple[str, ...] = ()

    def info(self, pgv: PgView, standby_leader: bool, activity: str,
             leaving_sync: bool = False) -> MemberInfo:
        """`standby_leader`: we hold the lease of a standby cluster; `activity`: a long step
        under way (cloning, rewinding), shown as the state; `leaving_sync`: about to restart
        (slot_copies.leaving_sync), so the leader should not wait for us."""
        if pgv.running and pgv.in_recovery is False:
            role = Role.PRIMARY
        elif pgv.running and pgv.in_recovery and standby_leader:
            role = Role.STANDBY_LEADER
        elif pgv.running and pgv.in_recovery:
            role = Role.REPLICA
        else:
            role = Role.UNKNOWN
        if activity:
            state = activity
        elif pgv.running and pgv.healthy:
            state = "running"
        elif pgv.running:
            state = "unhealthy"
        elif pgv.data != DataState.VALID:
            state = "uninitialized"
        else:
            state = "stopped"
        me = self.me
        return MemberInfo(
            name=me.name, api_url=me.api_url, host=me.host, port=me.port,
            role=role, state=state, running=pgv.running and pgv.healthy, timeline=pgv.timeline,
            lsn=pgv.lsn, received_lsn=pgv.received_lsn, replayed_lsn=pgv.replayed_lsn,
            upstream=pgv.upstream if role == Role.REPLICA else None,
            streaming=role == Role.REPLICA and pgv.streaming, tags=me.tags,
            agent_pid=os.getpid(), postmaster_pid=pgv.postmaster_pid, version=__version__,
            pg_version=pgv.version, pending_restart=pgv.pending_restart,
            logical_slots=self._slots_seen(pgv), native_slots=self._native,
            logical_gate_port=self.gate_port,
            waits_for=tuple(sorted(pgv.sync.members)) if role == Role.PRIMARY else (),
            leaving_sync=leaving_sync and role == Role.REPLICA)

    def _slots_seen(self, pgv: PgView) -> tuple[tuple[str, int], ...]:
        """Our logical slots as last read (kept through a loop that did not read them)."""
        if not pgv.running:
            self._slots, self._native = (), ()
        elif pgv.logical is not None:
            slots = pgv.logical.slots
            self._slots = tuple(sorted((n, s.confirmed_flush) for n, s in slots.items()
                                       if s.confirmed_flush is not None and not s.lost))
            self._native = tuple(sorted(n for n, s in slots.items() if s.failover))
        return self._slots
