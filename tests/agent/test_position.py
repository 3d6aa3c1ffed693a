"""GET /position's shared reading: concurrent callers share one PostgreSQL reading at a time, and
nobody is answered with a reading that started before they asked."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from pgwarden.agent.position import SharedReading, looks_behind_the_leader, with_fresh_position
from pgwarden.core.model import ClusterView, DataState, PeerReading, PgView, Role


class SlowServer:
    """A reading that takes `duration` and reports its own start order as its LSN."""

    def __init__(self, duration: float) -> None:
        self.duration = duration
        self.lock = threading.Lock()
        self.running = 0
        self.most_at_once = 0
        self.starts: list[float] = []

    def read(self, timeout: float) -> PeerReading:
        with self.lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
            self.starts.append(time.monotonic())
            number = len(self.starts)
        time.sleep(min(self.duration, timeout))
        with self.lock:
            self.running -= 1
        return PeerReading("n", reachable=True, running=True, lsn=number)


def test_concurrent_callers_share_readings_one_at_a_time() -> None:
    server = SlowServer(0.2)
    shared = SharedReading(server.read, "n")
    with ThreadPoolExecutor(50) as pool:
        readings = list(pool.map(lambda _: shared.read(5.0), range(200)))
    assert all(r.running for r in readings)
    assert server.most_at_once == 1
    assert len(server.starts) <= 10  # not one per caller


def test_a_caller_never_gets_a_reading_that_started_before_it_asked() -> None:
    server = SlowServer(0.3)
    shared = SharedReading(server.read, "n")
    first = threading.Thread(target=shared.read, args=(5.0,))
    first.start()
    while not server.starts:  # the first reading is under way
        time.sleep(0.001)
    asked = time.monotonic()
    reading = shared.read(5.0)
    first.join()
    assert reading.lsn == 2  # the second reading, not the one in flight when we asked
    assert server.starts[1] >= asked
    # Once done, a new caller does not get the finished reading either: a fresh one runs.
    assert shared.read(5.0).lsn == 3


def test_a_caller_out_of_time_reads_as_not_running() -> None:
    server = SlowServer(1.0)
    shared = SharedReading(server.read, "n")
    first = threading.Thread(target=shared.read, args=(5.0,))
    first.start()
    while not server.starts:
        time.sleep(0.001)
    started = time.monotonic()
    reading = shared.read(0.2)
    assert not reading.running and reading.reachable
    assert time.monotonic() - started < 0.6
    first.join()


def test_a_failing_reading_frees_the_next_caller() -> None:
    calls = []

    def broken(timeout: float) -> PeerReading:
        calls.append(timeout)
        raise RuntimeError("boom")

    shared = SharedReading(broken, "n")
    for _ in range(2):
        try:
            shared.read(1.0)
        except RuntimeError:
            pass
    assert len(calls) == 2


# -- a replica's position published after the store read (agent/runner.py) -----------------------


def _view(leader_lsn: int | None, leader: str = "n1") -> ClusterView:
    from pgwarden.config.schema import ClusterSettings
    from pgwarden.core.model import LeaderKey, MemberInfo

    lm = MemberInfo(name=leader, api_url="", host="h", port=1, role=Role.PRIMARY, state="running",
                    running=True, timeline=1, lsn=leader_lsn)
    return ClusterView(initialized="1", init_holder=None, settings=ClusterSettings(), settings_token="t",
                       leader=LeaderKey(leader, "x"), members={leader: lm}, sync=None, failover=None)


def _replica(received: int, replayed: int, timeline: int = 1) -> PgView:
    return PgView(data=DataState.VALID, running=True, healthy=True, in_recovery=True, timeline=timeline,
                  lsn=max(received, replayed), received_lsn=received, replayed_lsn=replayed)


def test_a_replica_below_the_leaders_published_position_reads_its_own_again() -> None:
    assert looks_behind_the_leader(_replica(0x3000000, 0x3000000), _view(0x4000000), "n2")
    assert not looks_behind_the_leader(_replica(0x4000000, 0x3000000), _view(0x4000000), "n2")
    assert not looks_behind_the_leader(_replica(0x3000000, 0x3000000), _view(None), "n2")
    assert not looks_behind_the_leader(_replica(0x3000000, 0x3000000), _view(0x4000000, leader="n2"), "n2")
    assert not looks_behind_the_leader(_replica(0x3000000, 0x3000000), None, "n2")


def test_only_a_later_reading_of_the_same_replica_replaces_the_positions() -> None:
    old, later = _replica(0x3000000, 0x3000000), _replica(0x4000000, 0x4000000)
    assert with_fresh_position(old, later).received_lsn == 0x4000000
    assert with_fresh_position(old, _replica(0x4000000, 0x4000000, timeline=2)) == old  # promoted meanwhile
    assert with_fresh_position(old, PgView(data=DataState.VALID)) == old  # not answering
