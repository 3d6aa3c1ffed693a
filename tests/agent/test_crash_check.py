"""Rule 16's evidence on real servers (agent/crash_check.py, GET /leader-check): a node counts as
refused only when nothing listens on its PostgreSQL port nor on its REST port, and a WAL receiver
still streaming from it is reported attached."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest

from pgwarden.agent.crash_check import CrashCheck, refused
from pgwarden.agent.peers import PeerProbe
from pgwarden.api.auth import BasicAuth, basic_header
from pgwarden.api.server import ApiServer
from pgwarden.api.state import NodeState, StateHolder
from pgwarden.core.fast_path import refusal
from pgwarden.core.model import ClusterView, LeaderKey, MemberInfo, Role, SyncState
from pgwarden.core.settings import ClusterSettings, SyncMode
from pgwarden.postgres.controller import PostgresController
from tests.agent.conftest import HOST
from tests.agent.test_peers import Position
from tests.core.builders import obs
from tests.support.pg import NEEDS_POSTGRES
from tests.support.wait import wait_for

pytestmark = [pytest.mark.integration, NEEDS_POSTGRES]

CREDENTIALS = ("pgwarden", "leader-check-pw")


@pytest.fixture
def rest_stand_in() -> Iterator[socket.socket]:
    """A listening socket where the leader's REST API would be (its port is what is probed)."""
    s = socket.socket()
    s.bind((HOST, 0))
    s.listen(8)
    yield s
    s.close()


def _view(p: PostgresController, c: PostgresController, api_port: int) -> ClusterView:
    ms = {
        "p": MemberInfo("p", f"http://{HOST}:{api_port}", HOST, p._cfg.postgresql.port, Role.PRIMARY),
        "c": MemberInfo("c", "", HOST, c._cfg.postgresql.port, Role.REPLICA),
    }
    return ClusterView(initialized="1", init_holder=None,
                       settings=ClusterSettings(synchronous_mode=SyncMode.ON), settings_token="",
                       leader=LeaderKey("p", "7"), members=ms,
                       sync=SyncState("p", frozenset({"c"}), 1, token="3"), failover=None)


def test_a_refusal_needs_both_ports_closed_and_a_frozen_postmaster_is_never_refused(
        pair: tuple[PostgresController, PostgresController], rest_stand_in: socket.socket) -> None:
    p, c = pair
    api_port = rest_stand_in.getsockname()[1]
    view = _view(p, c, api_port)
    holder = StateHolder(NodeState(member=view.members["c"], cluster=view, store_ok=True,
                                   holds_lease=False, last_loop_at=time.monotonic(), started_at=time.time()))
    api = ApiServer(HOST, 0, holder, None, Position(c, "c", view), "c", auth=BasicAuth(*CREDENTIALS))
    api.start()
    probe = PeerProbe(auth_header=basic_header(*CREDENTIALS))
    me = MemberInfo("c", api.url, HOST, c._cfg.postgresql.port)
    try:
        def ask() -> tuple[bool, bool]:
            got = probe.check_leader([me], "p", 2.0)["c"]
            assert got is not None, "GET /leader-check did not answer"
            return got.refused, got.attached

        assert ask() == (False, True)  # all up, and c streams from p
        anonymous = PeerProbe()
        try:
            assert anonymous.check_leader([me], "p", 2.0)["c"] is None  # no credentials: no answer
        finally:
            anonymous.close()
        rest_stand_in.close()  # the agent gone, its PostgreSQL still up: not a crash
        assert ask() == (False, True)

        pid = p.postmaster_pid()
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)  # frozen: the kernel still completes the handshake
        try:
            assert ask()[0] is False
        finally:
            os.kill(pid, signal.SIGCONT)

        p.stop("immediate", 30)  # now nothing listens on either port
        wait_for(lambda: ask() == (True, False) or None, 30, "a refused node and a detached receiver")
        # Another leader name than the one our snapshot holds: never "refused".
        other = probe.check_leader([me], "x", 2.0)["c"]
        assert other is not None and not other.refused and other.attached

        # The candidate's own gathering, judged by the core: here c is the only remaining member.
        pgv = c.observe(2)
        assert not pgv.streaming
        ev = CrashCheck("c", c).gather(view, pgv, probe.check_leader, 2.0)
        assert ev is not None and ev.leader == "p" and ev.token == "7"
        assert ev.checks["c"].refused and not ev.checks["c"].attached
        o = obs("c", pgv, view)
        assert refusal(replace(o, crash=ev), view) is None
    finally:
        probe.close()
        api.stop()


def test_a_timeout_or_an_unresolvable_name_is_not_a_refusal() -> None:
    # A listener whose accept queue is full drops further SYNs: the connect times out, as
    # behind a partition that drops packets.
    full = socket.socket()
    full.bind((HOST, 0))
    full.listen(0)
    port = full.getsockname()[1]
    queued = socket.create_connection((HOST, port), timeout=2)
    try:
        assert refused(HOST, port, timeout=0.3) is False
    finally:
        queued.close()
        full.close()
    assert refused("no-such-host.invalid", 5432) is False
    s = socket.socket()
    s.bind((HOST, 0))
    port = s.getsockname()[1]
    s.close()  # bound then closed: nothing listens there now
    assert refused(HOST, port) is True
