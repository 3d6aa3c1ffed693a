"""The agent's logical-replication threads (agent/logical.py): work off the HA loop, one at a
time, and reads that never hold the loop longer than their bound."""

from __future__ import annotations

import threading

from pgwarden.agent.logical import BoundedReader, LogicalWorker
from pgwarden.core.logical import DropPublication, LogicalChange, LogicalObjects
from pgwarden.postgres.controller import PostgresError
from tests.support.wait import wait_for

EMPTY = LogicalObjects({}, {})


def test_a_read_that_does_not_answer_in_time_is_given_up_and_not_doubled() -> None:
    release = threading.Event()
    calls: list[float] = []

    def slow(timeout: float) -> LogicalObjects:
        calls.append(timeout)
        release.wait(10)
        return EMPTY

    r = BoundedReader(slow)
    assert r.read(0.1) is None
    assert r.read(0.1) is None  # the first is still in flight: no second thread
    assert len(calls) == 1
    release.set()
    wait_for(lambda: r.read(1.0) == EMPTY, 5, "a read once the server answers")


def test_one_change_at_a_time_and_the_last_error_is_kept() -> None:
    release = threading.Event()
    seen: list[LogicalChange] = []

    def apply(change: LogicalChange, timeout: float) -> None:
        seen.append(change)
        release.wait(10)
        raise PostgresError('publication "p" does not exist')

    w = LogicalWorker(apply)
    assert w.submit(DropPublication("p"))
    assert not w.submit(DropPublication("q"))  # busy: the loop submits it again next time
    release.set()
    wait_for(lambda: w.last_error is not None, 5, "the failure recorded")
    assert "does not exist" in (w.last_error or "")
    wait_for(lambda: w.submit(DropPublication("q")), 5, "the worker free again")
    assert [c.name for c in seen if isinstance(c, DropPublication)][:2] == ["p", "q"]
