"""Peers' positions for a promotion decision are read from their PostgreSQL when asked, never the
last loop's published status (safety review, finding 1): in quorum mode `ANY 1 (B, C)`, C may hold
commits only C acknowledged while its published position does not show them yet."""

from __future__ import annotations

import time

import pytest

from pgwarden.agent.crash_check import CrashCheck
from pgwarden.agent.peers import PeerProbe
from pgwarden.agent.position import fresh_position
from pgwarden.api.server import ApiServer
from pgwarden.api.state import NodeState, StateHolder
from pgwarden.core.model import ClusterView, LeaderCheck, MemberInfo, PeerReading, Role
from pgwarden.postgres.controller import PostgresController
from tests.support.pg import (
    NEEDS_POSTGRES,
    query,
)
from tests.support.wait import wait_for

pytestmark = [
    pytest.mark.integration,
    NEEDS_POSTGRES,
]

HOST = "127.0.0.1"


class Position:
    """The agent's side of GET /position, on a real controller."""

    def __init__(self, pg: PostgresController, name: str, view: ClusterView | None = None) -> None:
        self.pg, self.name, self.view = pg, name, view

    def request_restart(self) -> str:
        raise AssertionError("not used")

    def request_reinitialize(self, force: bool) -> str:
        raise AssertionError("not used")

    def read_position(self, timeout: float) -> PeerReading:
        return fresh_position(self.pg, self.name, timeout)

    def check_leader(self, leader: str, timeout: float) -> LeaderCheck:
        return CrashCheck(self.name, self.pg).answer(self.view, leader, timeout)

    def failsafe_confirm(self, leader: str, timeline: int | None, ttl: float) -> tuple[bool, str]:
        raise AssertionError("not used")

    def failsafe_vote(self, candidate: str, ttl: float, round_id: str = "") -> tuple[bool, str]:
        raise AssertionError("not used")

    def failsafe_release(self, candidate: str, round_id: str) -> tuple[bool, str]:
        raise AssertionError("not used")


def test_probe_reports_the_position_the_peer_has_now_not_its_last_published_one(
        pair: tuple[PostgresController, PostgresController]) -> None:
    p, c = pair
    stale = c.observe(2)
    assert stale.received_lsn is not None
    # C's agent published this reading; its loop has not run since (slow, or just not yet).
    published = MemberInfo(name="c", api_url="", host=HOST, port=c._cfg.postgresql.port,
                           role=Role.REPLICA, running=True, timeline=stale.timeline, lsn=stale.lsn,
                           received_lsn=stale.received_lsn, replayed_lsn=stale.replayed_lsn)
    holder = StateHolder(NodeState(member=published, cluster=None, store_ok=True, holds_lease=False,
                                   last_loop_at=time.monotonic(), started_at=time.time()))
    api = ApiServer(HOST, 0, holder, None, Position(c, "c"), "c")
    api.start()
    probe = PeerProbe()
    try:
        # Commits C received after it published (in quorum mode: acknowledged by C alone, say).
        query(p._cfg, "INSERT INTO t SELECT generate_series(1, 5000)")
        (end,) = query(p._cfg, "SELECT pg_current_wal_lsn()::text")[0]
        end_lsn = int(end.split("/")[0], 16) << 32 | int(end.split("/")[1], 16)
        wait_for(lambda: (c.observe(2).received_lsn or 0) >= end_lsn or None, 30, "C receives the commits")
        me = MemberInfo(name="c", api_url=api.url, host=HOST, port=c._cfg.postgresql.port)
        reading = probe.read([me], 2.0)["c"]
        assert reading.reachable and reading.running
        assert (reading.received_lsn or 0) >= end_lsn > (stale.received_lsn or 0), \
            "the probe reported the peer's last published position, not its position now"
    finally:
        probe.close()
        api.stop()
