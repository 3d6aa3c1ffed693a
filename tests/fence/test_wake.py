"""The wake-up channel and the idle bound on their own (issue 16): no wake-up is lost between the
fencer's read and its wait, the agent never writes into anything but a FIFO, only renewals go
without a wake-up, the bound fits every timing the settings accept, and the optional state field
never keeps an armed state from being read."""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
from pathlib import Path

import pytest

from pgwarden.core.settings import LEASE_MARGIN, ClusterSettings
from pgwarden.fence import fencer as fencer_mod
from pgwarden.fence.state import FenceState, read_state, write_state
from pgwarden.fence.supervisor import Fencer, _wake_needed, idle_bound
from pgwarden.fence.wake import DEFAULT_BOUND, MAX_BOUND, WAKE_SLACK, WakeReader, send_wake, wake_path


def _reader(path: Path) -> WakeReader:
    errors: list[Exception] = []
    r = WakeReader(path, 0.05, errors.append)
    assert r.fd is not None and not errors, errors
    return r


def test_a_wake_up_sent_between_the_read_and_the_wait_ends_the_wait(tmp_path: Path) -> None:
    r = _reader(tmp_path / "fence.wake")
    try:
        r.drain()
        # ...the fencer reads the state here; the agent arms and wakes it right after...
        assert send_wake(tmp_path / "fence.wake")
        t = time.monotonic()
        r.wait(5.0)
        assert time.monotonic() - t < 1.0, "the wake-up was lost"
        r.drain()  # consumed: the next wait lasts its time
        t = time.monotonic()
        r.wait(0.2)
        assert time.monotonic() - t >= 0.19
    finally:
        r.close()


@pytest.mark.timeout(30)
def test_the_run_loop_drains_before_it_reads(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent arms and wakes right after the fencer's read: the next read must follow at once,
    not an idle bound later (as it would if the loop drained the pipe after reading)."""
    agent = subprocess.Popen(["sleep", "60"])
    state = tmp_path / "fence.json"
    write_state(state, FenceState(agent.pid, False, 0.0, idle_bound=MAX_BOUND))
    ticks: list[float] = []
    real_tick = fencer_mod.Watch.tick

    def tick(self: fencer_mod.Watch, now: float) -> bool:
        ticks.append(time.monotonic())
        if len(ticks) == 2:  # end the run: the agent is gone and nothing is recorded to fence
            agent.kill()
            agent.wait(5)
        keep = real_tick(self, now)
        if len(ticks) == 1:
            write_state(state, FenceState(agent.pid, True, time.monotonic() + 30, idle_bound=MAX_BOUND))
            assert send_wake(wake_path(state))
        return keep

    monkeypatch.setattr(fencer_mod.Watch, "tick", tick)
    try:
        assert fencer_mod.run(state) == 0
    finally:
        if agent.poll() is None:
            agent.kill()
        agent.wait(5)
    assert len(ticks) == 2
    assert ticks[1] - ticks[0] < 0.5, f"read again only after {ticks[1] - ticks[0]:.2f} s"


def test_the_fencer_replaces_a_stray_file_or_link_and_the_agent_writes_only_into_a_fifo(
        tmp_path: Path) -> None:
    path = tmp_path / "fence.wake"
    assert not send_wake(path)  # nothing there: no fencer that reads wake-ups
    path.write_text("not a fifo")
    assert not send_wake(path)
    assert path.read_text() == "not a fifo"
    r = _reader(path)
    r.close()
    assert not send_wake(path)  # a FIFO nobody reads (ENXIO): the fencer is gone
    target = tmp_path / "precious"
    target.write_text("keep")
    path.unlink()
    path.symlink_to(target)
    assert not send_wake(path)
    r = _reader(path)
    try:
        assert send_wake(path)
        assert target.read_text() == "keep" and not path.is_symlink()
    finally:
        r.close()


def _st(armed: bool = True, deadline: float = 10.0, pm: int | None = 7,
        bound: float | None = 1.0) -> FenceState:
    return FenceState(1, armed, deadline, pm, 99 if pm else None, "/data", bound)


def test_only_a_renewal_goes_without_a_wake_up() -> None:
    assert not _wake_needed(_st(), _st(deadline=11.0))  # renewed: the fencer reads it in time
    assert not _wake_needed(_st(), _st(deadline=10.0))
    assert _wake_needed(None, _st())
    assert _wake_needed(_st(armed=False, deadline=0.0), _st())  # armed
    assert _wake_needed(_st(), _st(deadline=9.0))  # an earlier deadline (a lower ttl)
    assert _wake_needed(_st(), _st(deadline=11.0, pm=8))  # another postmaster
    assert _wake_needed(_st(pm=None), _st(deadline=11.0))
    assert _wake_needed(_st(), _st(deadline=11.0, bound=0.3))  # a shorter bound
    assert _wake_needed(_st(), _st(armed=False, deadline=0.0))


def _steps(lo: float, hi: float, step: float) -> list[float]:
    return [round(lo + i * step, 3) for i in range(round((hi - lo) / step) + 1)]


def test_the_idle_bound_fits_every_timing_the_settings_accept() -> None:
    """A lost wake-up after an arm is read within the bound; the arm follows its store call by at
    most retry_timeout; the deadline is ttl - LEASE_MARGIN after the call was sent. So the bound,
    and DEFAULT_BOUND for a state without one, must leave WAKE_SLACK of that gap, for every
    timing ClusterSettings accepts (searched on a grid, the worst corner exactly)."""
    accepted = 0
    for ttl in _steps(2.0, 8.0, 0.25):
        for loop_wait in _steps(0.1, 3.0, 0.1):
            for retry in _steps(0.2, 4.0, 0.05):
                try:
                    ClusterSettings(ttl=ttl, loop_wait=loop_wait, retry_timeout=retry)
                except ValueError:
                    continue
                accepted += 1
                room = ttl - LEASE_MARGIN - retry - WAKE_SLACK
                assert idle_bound(ttl, retry) <= room + 1e-9, (ttl, loop_wait, retry)
                assert room + 1e-9 >= DEFAULT_BOUND, (ttl, loop_wait, retry)
    assert accepted > 1000
    ClusterSettings(ttl=2.0, loop_wait=0.1, retry_timeout=0.95)  # the worst corner is valid...
    assert idle_bound(2.0, 0.95) == pytest.approx(DEFAULT_BOUND)  # ...and leaves exactly this
    with pytest.raises(ValueError):
        ClusterSettings(ttl=2.0, loop_wait=0.1, retry_timeout=0.96)
    assert idle_bound(4.0, 1.0) == MAX_BOUND  # the defaults: one read a second at most


@pytest.mark.parametrize("raw", ['"1"', "-1", "0", "true", "NaN", "Infinity", "[1]"])
def test_a_bad_idle_bound_never_hides_the_armed_state(tmp_path: Path, raw: str) -> None:
    state = tmp_path / "fence.json"
    d = {"agent_pid": 1, "armed": True, "deadline": 5.0, "postmaster_pid": 7, "postmaster_start": 9}
    state.write_text(json.dumps(d)[:-1] + f', "idle_bound": {raw}}}')
    st = read_state(state)
    assert st is not None and st.armed and st.deadline == 5.0 and st.idle_bound is None
    w = fencer_mod.Watch(state)
    w.last = st
    assert w.wait(4.0) == pytest.approx(DEFAULT_BOUND)


def test_a_state_without_a_bound_reads_as_an_older_agent_wrote_it(tmp_path: Path) -> None:
    state = tmp_path / "fence.json"
    state.write_text(json.dumps({"agent_pid": 1, "armed": False, "deadline": 0.0}))
    st = read_state(state)
    assert st is not None and st.idle_bound is None
    write_state(state, FenceState(1, False, 0.0, idle_bound=0.75))
    on_disk = json.loads(state.read_text())
    assert on_disk["idle_bound"] == 0.75
    # An older fencer reads these keys only, with d[...] or d.get(...): all still there.
    for key in ("agent_pid", "armed", "deadline", "postmaster_pid", "postmaster_start", "data_dir"):
        assert key in on_disk


def test_the_fencer_waits_by_state() -> None:
    w = fencer_mod.Watch(Path("/nonexistent/fence.json"))
    w.last = FenceState(1, False, 0.0, idle_bound=0.7)
    assert w.wait(100.0) == 0.7
    w.last = FenceState(1, False, 0.0, idle_bound=60.0)
    assert w.wait(100.0) == MAX_BOUND
    w.last = FenceState(1, True, 100.2, idle_bound=0.7)
    assert w.wait(100.0) == pytest.approx(0.2)  # to the deadline
    w.last = FenceState(1, True, 100.0, idle_bound=0.7)
    assert w.wait(100.0) == fencer_mod.POLL  # past it: poll
    assert not math.isclose(fencer_mod.POLL, 0.7)


def test_set_timing_reaches_the_state_and_start_does_not_keep_an_old_bound(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A restarted agent may run under other settings: until its first loop passes them on, the
    fencer uses DEFAULT_BOUND, safe for every timing."""
    run = tmp_path / "run"
    run.mkdir()
    write_state(run / "fence.json", FenceState(os.getpid(), True, 5.0, idle_bound=1.0))
    f = Fencer(run)
    monkeypatch.setattr(f, "_ensure", lambda: False)  # no fencer process: only the file matters
    f.start()
    st = read_state(f.state_file)
    assert st is not None and st.armed and st.deadline == 5.0 and st.idle_bound is None
    f.set_timing(2.0, 0.95)
    st = read_state(f.state_file)
    assert st is not None and st.idle_bound == pytest.approx(DEFAULT_BOUND) and st.armed
