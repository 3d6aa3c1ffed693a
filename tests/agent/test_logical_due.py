"""When the agent reads its server's logical replication objects (agent.logical.logical_read_due):
every loop while there is something to manage, every LOGICAL_RECHECK seconds on an idle primary."""

from __future__ import annotations

from pgwarden.agent.logical import LOGICAL_RECHECK, logical_read_due


def due(primary: bool = True, seen: bool = False, leader_has_slots: bool = False, declared: bool = False,
        since: float = 1.0) -> bool:
    return logical_read_due(primary=primary, seen=seen, leader_has_slots=leader_has_slots,
                            declared=declared, since_last_read=since)


def test_an_idle_primary_reads_only_every_recheck_interval() -> None:
    assert not due(since=1.0)
    assert not due(since=LOGICAL_RECHECK - 0.01)
    assert due(since=LOGICAL_RECHECK)


def test_a_primary_reads_every_loop_while_something_is_declared_or_seen() -> None:
    assert due(declared=True, since=0.0)
    assert due(seen=True, since=0.0)


def test_a_standby_reads_only_for_slots_to_copy() -> None:
    assert not due(primary=False, declared=True, since=LOGICAL_RECHECK * 10)
    assert due(primary=False, leader_has_slots=True, since=0.0)
    assert due(primary=False, seen=True, since=0.0)
