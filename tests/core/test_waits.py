"""The clocks the runner keeps for the core's bounded waits."""

from __future__ import annotations

from pgwarden.core.waits import WaitClocks
from tests.core.builders import switchover, view


def test_leaderless_and_request_clocks_start_at_first_sight_and_reset() -> None:
    w = WaitClocks()
    assert w.leaderless_for(5.0) == 0.0 and w.request_pending_for(5.0) == 0.0
    w.saw(view(None), 10.0)
    w.saw(view(None), 12.0)  # still leaderless: the clock keeps its start
    assert w.leaderless_for(13.0) == 3.0
    w.saw(view("n1"), 14.0)
    assert w.leaderless_for(20.0) == 0.0
    first = switchover("n1", "n2")
    w.saw(view("n1", failover=first), 21.0)
    w.saw(view("n1", failover=first), 22.0)
    assert w.request_pending_for(25.0) == 4.0
    w.saw(view("n1", failover=switchover("n1", "n3")), 26.0)  # another request: counted afresh
    assert w.request_pending_for(27.0) == 1.0
    w.saw(view("n1"), 28.0)
    assert w.request_pending_for(30.0) == 0.0


def test_stream_clock_counts_only_streaming_on_the_leaders_timeline() -> None:
    from pgwarden.core.waits import StreamClock

    from .builders import replica_pg

    c = StreamClock()
    c.saw(replica_pg("n1", streaming=False), 2, 10.0)
    c.saw(replica_pg("n1", streaming=True, timeline=1), 2, 15.0)  # a forked receiver's retry
    assert c.not_streaming_for(20.0) == 10.0
    c.saw(replica_pg("n1", streaming=True, timeline=2), 2, 21.0)
    assert c.not_streaming_for(22.0) == 0.0
    c.saw(replica_pg("n1", streaming=False), None, 30.0)
    c.restart()
    assert c.not_streaming_for(40.0) == 0.0


def test_unhealthy_clock_runs_only_while_a_running_server_fails_its_health_query() -> None:
    from pgwarden.core.waits import UnhealthyClock

    from .builders import primary_pg, stopped_pg

    c = UnhealthyClock()
    c.saw(primary_pg(healthy=False), 10.0)
    c.saw(primary_pg(healthy=False), 12.0)
    assert c.unhealthy_for(13.0) == 3.0
    c.saw(primary_pg(), 14.0)
    assert c.unhealthy_for(15.0) == 0.0
    c.saw(primary_pg(healthy=False), 16.0)
    c.saw(stopped_pg(), 17.0)  # a stopped server is not "unhealthy": other rules start it
    assert c.unhealthy_for(18.0) == 0.0
