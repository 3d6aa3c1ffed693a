"""Every health endpoint against tables of NodeStates: roles, lease, noloadbalance, tags, lag,
sync/quorum/async, liveness and readiness, as Patroni answers them."""

from __future__ import annotations

from dataclasses import replace

import pytest

from pgwarden.api.health import HEALTH_PATHS, BadRequest, health_status, member_lag
from pgwarden.api.state import NodeState
from pgwarden.config.schema import SyncMode
from pgwarden.core.model import Role, Tags

from .factory import (
    CAUGHT_UP,
    LAGGING,
    LEADER_LSN,
    MB,
    NOW,
    PRIMARY,
    member,
    node,
    node_without_store,
    view,
)

P = node(PRIMARY)
R = node(CAUGHT_UP)
LAG = node(LAGGING)
P_NO_LEASE = node(PRIMARY, holds_lease=False)
P_PG_DOWN = node(replace(PRIMARY, running=False, state="stopped"))
STANDBY_LEADER = node(member("node1", Role.STANDBY_LEADER, lsn=LEADER_LSN))
R_NOLB = node(replace(CAUGHT_UP, tags=Tags(noloadbalance=True)))
R_STARTING = node(replace(CAUGHT_UP, state="starting"))
R_STOPPED = node(replace(CAUGHT_UP, running=False, state="stopped"))
R_NO_STORE = node_without_store(CAUGHT_UP)
R_UNKNOWN_LEADER_LSN = node(CAUGHT_UP, view(
    (replace(PRIMARY, lsn=None), CAUGHT_UP, LAGGING), leader_lsn=None))

# (path, state, expected) for every endpoint and the basic node kinds.
ROLE_TABLE: list[tuple[str, NodeState, int]] = []


def _rows(state: NodeState, expected: dict[str, int]) -> None:
    ROLE_TABLE.extend((path, state, code) for path, code in expected.items())


_rows(P, {
    "/": 200, "/primary": 200, "/master": 200, "/read-write": 200, "/leader": 200,
    "/standby-leader": 503, "/standby_leader": 503, "/replica": 503, "/read-only": 200,
    "/sync": 503, "/synchronous": 503, "/read-only-sync": 200, "/read-only-synchronous": 200,
    "/quorum": 503, "/read-only-quorum": 200, "/async": 503, "/asynchronous": 503,
    "/health": 200, "/liveness": 200, "/readiness": 200,
})
_rows(R, {
    "/": 503, "/primary": 503, "/master": 503, "/read-write": 503, "/leader": 503,
    "/standby-leader": 503, "/replica": 200, "/read-only": 200, "/sync": 503,
    "/read-only-sync": 503, "/quorum": 503, "/read-only-quorum": 503, "/async": 200,
    "/asynchronous": 200, "/health": 200, "/liveness": 200, "/readiness": 200,
})
# Running as primary without the lease: not a writer anyone may route to.
_rows(P_NO_LEASE, {
    "/": 503, "/primary": 503, "/leader": 503, "/read-only": 503, "/replica": 503,
    "/read-only-sync": 503, "/health": 200, "/readiness": 503,
})
# Holds the lease but PostgreSQL is down: /leader only asks about the lease.
_rows(P_PG_DOWN, {
    "/": 503, "/primary": 503, "/leader": 200, "/read-only": 503, "/health": 503,
    "/readiness": 503,
})
_rows(STANDBY_LEADER, {
    "/standby-leader": 200, "/standby_leader": 200, "/leader": 200, "/primary": 503,
    "/": 503, "/replica": 503, "/read-only": 200, "/read-only-sync": 200, "/health": 200,
    "/readiness": 200,
})
_rows(R_NOLB, {
    "/replica": 503, "/read-only": 503, "/async": 503, "/health": 200, "/readiness": 200,
})
_rows(R_STARTING, {"/replica": 503, "/read-only": 503, "/health": 503, "/readiness": 503})
_rows(R_STOPPED, {"/replica": 503, "/async": 503, "/health": 503, "/readiness": 503})
# The store never answered: role checks still work, the sync family can't be decided.
_rows(R_NO_STORE, {
    "/replica": 200, "/read-only": 200, "/sync": 503, "/async": 503, "/quorum": 503,
    "/primary": 503, "/health": 200, "/readiness": 503,
})


@pytest.mark.parametrize(("path", "state", "expected"), ROLE_TABLE,
                         ids=[f"{s.member.name}-{s.member.role.value}-{p}" for p, s, _ in ROLE_TABLE])
def test_roles(path: str, state: NodeState, expected: int) -> None:
    assert health_status(path, {}, state, NOW) == expected


def test_table_covers_every_path() -> None:
    assert {p for p, _, _ in ROLE_TABLE} >= HEALTH_PATHS


LAG_TABLE: list[tuple[str, str, NodeState, int]] = [
    ("/replica", "1MB", LAG, 503),
    ("/replica", "100MB", LAG, 200),
    ("/replica", "64MB", LAG, 200),  # exactly at the limit is not "behind"
    ("/replica", str(64 * MB - 1), LAG, 503),
    ("/replica", "65536kB", LAG, 200),
    ("/replica", "1gb", LAG, 200),
    ("/replica", "0", R, 200),  # caught up by its received LSN
    ("/replica", "1GB", R_UNKNOWN_LEADER_LSN, 503),  # unknown lag fails a lag check
    ("/async", "1MB", LAG, 503),
    ("/async", "1GB", LAG, 200),
    ("/read-only", "1MB", LAG, 503),
    ("/read-only", "1MB", P, 200),  # the primary is not subject to lag
    ("/readiness", "1MB", LAG, 503),
    ("/readiness", "100MB", LAG, 200),
    ("/readiness", "1GB", R_UNKNOWN_LEADER_LSN, 503),
]


@pytest.mark.parametrize(("path", "lag", "state", "expected"), LAG_TABLE)
def test_lag(path: str, lag: str, state: NodeState, expected: int) -> None:
    assert health_status(path, {"lag": lag}, state, NOW) == expected


def test_unknown_leader_lsn_without_lag_filter_is_fine() -> None:
    assert health_status("/replica", {}, R_UNKNOWN_LEADER_LSN, NOW) == 200


def test_lag_falls_back_to_leader_member_lsn() -> None:
    st = node(LAGGING, view(leader_lsn=None))
    assert member_lag(st.member, st.cluster) == 64 * MB
    assert health_status("/replica", {"lag": "1MB"}, st, NOW) == 503


@pytest.mark.parametrize("path", sorted(HEALTH_PATHS - {"/liveness"}))
@pytest.mark.parametrize("bad", ["lots", "-1", "1PB", "1.5", "", "MB", "1e6"])
def test_bad_lag_is_a_bad_request(path: str, bad: str) -> None:
    with pytest.raises(BadRequest, match="lag"):
        health_status(path, {"lag": bad}, P, NOW)


TAG_NODE = node(replace(CAUGHT_UP, tags=Tags(nosync=True, replicatefrom="node1", failover_priority=3)))
TAG_TABLE: list[tuple[str, dict[str, str], NodeState, int]] = [
    ("/replica", {"tag_nosync": "true"}, TAG_NODE, 200),
    ("/replica", {"tag_nosync": "TRUE"}, TAG_NODE, 200),
    ("/replica", {"tag_nosync": "false"}, TAG_NODE, 503),
    ("/replica", {"tag_replicatefrom": "node1"}, TAG_NODE, 200),
    ("/replica", {"tag_replicatefrom": "NODE1"}, TAG_NODE, 200),
    ("/replica", {"tag_replicatefrom": "node2"}, TAG_NODE, 503),
    ("/replica", {"tag_failover_priority": "3"}, TAG_NODE, 200),
    ("/replica", {"tag_nosync": "true", "tag_failover_priority": "2"}, TAG_NODE, 503),
    ("/replica", {"tag_replicatefrom": "node1"}, R, 503),  # tag not set on this node
    ("/replica", {"tag_datacenter": "east"}, TAG_NODE, 503),  # no such tag
    ("/replica", {"other": "x", "lag": "1GB"}, TAG_NODE, 200),  # non-tag keys are ignored
    ("/async", {"tag_nosync": "false"}, TAG_NODE, 503),
    ("/read-only", {"tag_nosync": "true"}, TAG_NODE, 200),
    # Patroni applies tag filters to every non-leader endpoint, the primary on /read-only included,
    # and ignores them on the writer endpoints.
    ("/read-only", {"tag_nosync": "true"}, P, 503),
    ("/read-only", {"tag_nosync": "false"}, P, 200),
    ("/primary", {"tag_nosync": "true"}, P, 200),
    ("/leader", {"tag_datacenter": "x"}, P, 200),
]


@pytest.mark.parametrize(("path", "query", "state", "expected"), TAG_TABLE)
def test_tags(path: str, query: dict[str, str], state: NodeState, expected: int) -> None:
    assert health_status(path, query, state, NOW) == expected


SYNC_ON = view(mode=SyncMode.ON, sync_members=["node2"])
QUORUM = view(mode=SyncMode.QUORUM, sync_members=["node2", "node3"], quorum=1)
STALE_SYNC = view(mode=SyncMode.OFF, sync_members=["node2"])  # mode off: the set means nothing
SYNC_TABLE: list[tuple[str, NodeState, int]] = [
    ("/sync", node(CAUGHT_UP, SYNC_ON), 200),
    ("/synchronous", node(CAUGHT_UP, SYNC_ON), 200),
    ("/read-only-sync", node(CAUGHT_UP, SYNC_ON), 200),
    ("/async", node(CAUGHT_UP, SYNC_ON), 503),
    ("/quorum", node(CAUGHT_UP, SYNC_ON), 503),
    ("/replica", node(CAUGHT_UP, SYNC_ON), 200),
    ("/sync", node(LAGGING, SYNC_ON), 503),
    ("/read-only-sync", node(LAGGING, SYNC_ON), 503),
    ("/async", node(LAGGING, SYNC_ON), 200),
    ("/sync", node(PRIMARY, SYNC_ON), 503),
    ("/read-only-sync", node(PRIMARY, SYNC_ON), 200),
    ("/sync", node(replace(CAUGHT_UP, tags=Tags(noloadbalance=True)), SYNC_ON), 503),
    ("/quorum", node(CAUGHT_UP, QUORUM), 200),
    ("/quorum", node(LAGGING, QUORUM), 200),
    ("/read-only-quorum", node(CAUGHT_UP, QUORUM), 200),
    ("/read-only-quorum", node(PRIMARY, QUORUM), 200),
    ("/quorum", node(PRIMARY, QUORUM), 503),
    ("/sync", node(CAUGHT_UP, QUORUM), 503),
    ("/read-only-sync", node(CAUGHT_UP, QUORUM), 503),
    ("/async", node(CAUGHT_UP, QUORUM), 503),
    ("/sync", node(CAUGHT_UP, STALE_SYNC), 503),
    ("/async", node(CAUGHT_UP, STALE_SYNC), 200),
]


@pytest.mark.parametrize(("path", "state", "expected"), SYNC_TABLE)
def test_sync_quorum_async(path: str, state: NodeState, expected: int) -> None:
    assert health_status(path, {}, state, NOW) == expected


def test_sync_lag_filter() -> None:
    lagging_sync = node(LAGGING, view(mode=SyncMode.ON, sync_members=["node3"]))
    assert health_status("/sync", {}, lagging_sync, NOW) == 200
    assert health_status("/sync", {"lag": "1MB"}, lagging_sync, NOW) == 503


LIVENESS_TABLE: list[tuple[NodeState, int]] = [
    (node(PRIMARY, last_loop_at=NOW - 3.9), 200),
    (node(PRIMARY, last_loop_at=NOW - 4.1), 503),  # ttl on a primary
    (node(CAUGHT_UP, last_loop_at=NOW - 4.1), 200),
    (node(CAUGHT_UP, last_loop_at=NOW - 7.9), 200),
    (node(CAUGHT_UP, last_loop_at=NOW - 8.1), 503),  # 2 * ttl on a replica
    (node(PRIMARY, view(ttl=10.0), last_loop_at=NOW - 9), 200),  # ttl from the store
    (node(PRIMARY, view(ttl=10.0), last_loop_at=NOW - 11), 503),
    # a primary whose PostgreSQL is down gets the replica allowance
    (node(replace(PRIMARY, running=False, state="stopped"), last_loop_at=NOW - 5), 200),
    (node_without_store(CAUGHT_UP, last_loop_at=NOW - 7.9), 200),  # default ttl 4
    (node_without_store(CAUGHT_UP, last_loop_at=NOW - 8.1), 503),
    (node(PRIMARY, view(paused=True), last_loop_at=NOW - 100), 200),  # maintenance mode
]


@pytest.mark.parametrize(("state", "expected"), LIVENESS_TABLE)
def test_liveness(state: NodeState, expected: int) -> None:
    assert health_status("/liveness", {}, state, NOW) == expected


def test_readiness() -> None:
    # Without ?lag the cluster's maximum_lag_on_failover (1 MB by default) is the limit.
    assert health_status("/readiness", {}, LAG, NOW) == 503
    assert health_status("/readiness", {}, R, NOW) == 200
    # mode=write measures from the received LSN, mode=apply from the replayed one.
    behind_on_replay = node(replace(CAUGHT_UP, replayed_lsn=LEADER_LSN - 10 * MB))
    assert health_status("/readiness", {"mode": "write"}, behind_on_replay, NOW) == 200
    assert health_status("/readiness", {"mode": "apply"}, behind_on_replay, NOW) == 503
    assert health_status("/readiness", {"mode": "apply", "lag": "16MB"}, behind_on_replay, NOW) == 200
    with pytest.raises(BadRequest, match="mode"):
        health_status("/readiness", {"mode": "fast"}, R, NOW)


def test_paused_primary_keeps_its_role_when_store_is_down() -> None:
    paused = view(paused=True)
    lost = node(PRIMARY, paused, holds_lease=False, store_ok=False)
    assert health_status("/primary", {}, lost, NOW) == 200
    not_paused = node(PRIMARY, holds_lease=False, store_ok=False)
    assert health_status("/primary", {}, not_paused, NOW) == 503


def test_unknown_path_is_not_a_health_path() -> None:
    with pytest.raises(ValueError, match="not a health path"):
        health_status("/nope", {}, P, NOW)
