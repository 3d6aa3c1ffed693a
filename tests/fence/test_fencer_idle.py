"""The fencer sleeping between reads (issue 16) must fence as promptly as the 50 ms poll did:
an arm during a long idle sleep is seen at once through the wake-up; a lost wake-up is read
within the state's idle bound, so a deadline at least that far off is still met; a storm of
wake-ups neither breaks it nor leaves it spinning; a renewal while it sleeps never fences early;
without a usable wake-up FIFO it falls back to the fast poll.

Each test arms right after the fencer's first read (its "watching" line), so the fencer's next
read without a wake-up is a whole idle bound away: a fencer that missed the wake-up, slept past
its bound or spun would fail the timing checks, not just by bad luck."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from pgwarden.core.settings import LEASE_MARGIN
from pgwarden.fence.state import FenceState, alive, process_start_time, write_state
from pgwarden.fence.supervisor import Fencer
from pgwarden.fence.wake import DEFAULT_BOUND, MAX_BOUND, send_wake, wake_path
from tests.fence.test_fencer import Proc, _children
from tests.support.wait import wait_for

# What the fencer may add to a deadline: its read, /proc scan and kills, and this test's own
# polling, on a shared and sometimes loaded machine. The store's lease outlives the deadline by
# LEASE_MARGIN (0.5 s): that is the fencer's whole allowance (rule 2), and what is checked.
BUDGET = LEASE_MARGIN


@pytest.fixture
def fencer_pids() -> Iterator[list[int]]:
    """Fencers started through `Fencer` (this test process is their agent, so they never exit on
    their own): SIGKILLed by pid while still a fencer, and reaped."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        try:
            if b"pgwarden.fence.fencer" in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass


def _spawn(spawned: list[Proc], state: Path) -> Proc:
    proc = subprocess.Popen([sys.executable, "-m", "pgwarden.fence.fencer", str(state)],
                            start_new_session=True)
    spawned.append(proc)
    return proc


def _agent(spawned: list[Proc]) -> Proc:
    proc = subprocess.Popen(["sleep", "60"])
    spawned.append(proc)
    return proc


def _idle_fencer(tmp_path: Path, pm: Proc, spawned: list[Proc],
                 bound: float | None) -> tuple[Proc, Proc, Path, int | None]:
    """A fencer watching a disarmed state of a stand-in agent, after its first read:
    (agent, fencer, state file, the postmaster's start time)."""
    agent = _agent(spawned)
    state = tmp_path / "fence.json"
    start = process_start_time(pm.pid)
    write_state(state, FenceState(agent.pid, False, 0.0, pm.pid, start, None, bound))
    fencer = _spawn(spawned, state)
    _first_read(fencer.pid, tmp_path / "fencer.log")
    return agent, fencer, state, start


def _first_read(pid: int, log: Path) -> None:
    """Return as soon as fencer `pid` has read its state for the first time."""
    wait_for(lambda: f"fencer {pid} watching" in log.read_text(), 10, "the fencer's first read",
             interval=0.005)


def _fenced_at(pm: Proc, timeout: float = 5.0) -> float:
    """When the postmaster was seen gone (polled every 5 ms)."""
    wait_for(lambda: pm.poll() is not None, timeout, "the postmaster fenced", interval=0.005)
    return time.monotonic()


def _not_before(pm: Proc, deadline: float) -> None:
    while time.monotonic() < deadline - 0.05:
        assert pm.poll() is None, "fenced before the deadline"
        time.sleep(0.01)


def _cpu(pid: int) -> float:
    raw = Path(f"/proc/{pid}/stat").read_text()
    f = raw[raw.rfind(")") + 2:].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def test_an_arm_during_a_long_idle_sleep_is_fenced_at_its_deadline(
        tmp_path: Path, fake_postmaster: Proc, fencer_pids: list[int]) -> None:
    """(a) Through the agent's own code: the longest idle bound, and an arm whose deadline is
    much nearer than the fencer's next read; only the wake-up can make it in time."""
    f = Fencer(tmp_path / "run")
    f.set_timing(30.0, 1.0)  # a long lease: the bound is MAX_BOUND
    f.start()
    pid = int(f.pid_file.read_text())
    fencer_pids.append(pid)
    _first_read(pid, f.run_dir / "fencer.log")
    deadline = time.monotonic() + 0.15
    f.arm(deadline, fake_postmaster.pid)
    _not_before(fake_postmaster, deadline)
    late = _fenced_at(fake_postmaster) - deadline
    assert late <= BUDGET, f"fenced {late:.3f} s after the deadline (idle bound {MAX_BOUND} s)"
    wait_for(lambda: "fenced postmaster" in (f.run_dir / "fencer.log").read_text(), 5,
             "the fencing logged (after its kills)")


def test_a_deadline_moved_earlier_wakes_the_armed_fencer(
        tmp_path: Path, fake_postmaster: Proc, fencer_pids: list[int]) -> None:
    """An armed fencer sleeps towards its deadline; a shorter lease (a lower ttl) must not wait
    for the old one."""
    f = Fencer(tmp_path / "run")
    f.set_timing(30.0, 1.0)
    f.start()
    pid = int(f.pid_file.read_text())
    fencer_pids.append(pid)
    f.arm(time.monotonic() + 30.0, fake_postmaster.pid)
    _first_read(pid, f.run_dir / "fencer.log")
    time.sleep(0.05)  # let it read the armed state and go to sleep towards the far deadline
    deadline = time.monotonic() + 0.15
    f.arm(deadline, fake_postmaster.pid)
    _not_before(fake_postmaster, deadline)
    late = _fenced_at(fake_postmaster) - deadline
    assert late <= BUDGET, f"fenced {late:.3f} s after the moved deadline"


@pytest.mark.parametrize("bound", [None, 0.5, MAX_BOUND])
def test_a_lost_wake_up_is_read_within_the_idle_bound(
        tmp_path: Path, fake_postmaster: Proc, spawned: list[Proc], bound: float | None) -> None:
    """(b) The agent wrote the armed state and died before waking the fencer. With the deadline
    at least the bound (plus a little) after the write, as every valid timing guarantees for an
    arm after a store call, the primary is still fenced at its deadline. No bound in the state
    (an older agent) means DEFAULT_BOUND."""
    agent, _fencer, state, start = _idle_fencer(tmp_path, fake_postmaster, spawned, bound)
    gap = (DEFAULT_BOUND if bound is None else bound) + 0.05
    deadline = time.monotonic() + gap
    write_state(state, FenceState(agent.pid, True, deadline, fake_postmaster.pid, start, None, bound))
    _not_before(fake_postmaster, deadline)
    late = _fenced_at(fake_postmaster) - deadline
    assert late <= BUDGET, f"fenced {late:.3f} s after the deadline without a wake-up (bound {bound})"


def test_a_renewal_while_it_sleeps_never_fences_early(
        tmp_path: Path, fake_postmaster: Proc, spawned: list[Proc]) -> None:
    """(d) It wakes at the old deadline, reads the later one, and sleeps on; a renewal sends no
    wake-up (nothing to act on), so this is the path every leader takes once a loop."""
    agent = _agent(spawned)
    state = tmp_path / "fence.json"
    kids = _children(fake_postmaster.pid)
    armed = FenceState(agent.pid, False, 0.0, fake_postmaster.pid,
                       process_start_time(fake_postmaster.pid), None, MAX_BOUND)
    write_state(state, armed)
    fencer = _spawn(spawned, state)
    _first_read(fencer.pid, tmp_path / "fencer.log")
    armed = replace(armed, armed=True, deadline=time.monotonic() + 0.6)
    write_state(state, armed)
    assert send_wake(wake_path(state))  # armed: it reads that now and sleeps to the deadline
    time.sleep(0.3)
    later = time.monotonic() + 1.5
    write_state(state, replace(armed, deadline=later))  # renewed: no wake-up
    _not_before(fake_postmaster, later)
    assert fencer.poll() is None
    late = _fenced_at(fake_postmaster) - later
    assert late <= BUDGET, f"fenced {late:.3f} s after the renewed deadline"
    wait_for(lambda: not any(alive(k) for k in kids), 3, "every backend killed")


def test_a_wake_up_storm_neither_breaks_it_nor_leaves_it_spinning(
        tmp_path: Path, fake_postmaster: Proc, spawned: list[Proc]) -> None:
    """(c) Tens of thousands of wake-ups and a full pipe: afterwards it idles (a busy loop would
    burn about a CPU-second a second) and still fences at once."""
    agent, fencer, state, start = _idle_fencer(tmp_path, fake_postmaster, spawned, MAX_BOUND)
    fifo = wake_path(state)
    assert all(send_wake(fifo) for _ in range(20000))
    # Frozen, it cannot drain: fill the pipe to the brim. Further wake-ups find it full and
    # still count as sent (one is waiting already).
    os.kill(fencer.pid, signal.SIGSTOP)
    fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    try:
        with pytest.raises(BlockingIOError):
            for _ in range(100):
                os.write(fd, b"x" * 65536)
        assert send_wake(fifo)
    finally:
        os.close(fd)
        os.kill(fencer.pid, signal.SIGCONT)
    assert fencer.poll() is None, "the storm ended the fencer"
    time.sleep(0.2)  # let it drain what is left (the CPU check below is what asserts)
    before = _cpu(fencer.pid)
    end = time.monotonic() + 2.0
    _not_before(fake_postmaster, end)  # disarmed: nothing to fence, and nothing happens
    used = _cpu(fencer.pid) - before
    assert used <= 0.1, f"the fencer used {used:.2f} CPU-s in 2 s after the storm"
    deadline = time.monotonic() - 0.1
    write_state(state, FenceState(agent.pid, True, deadline, fake_postmaster.pid, start, None, MAX_BOUND))
    written = time.monotonic()
    assert send_wake(fifo)
    late = _fenced_at(fake_postmaster) - written
    assert late <= BUDGET, f"fenced {late:.3f} s after the woken arm"


def test_without_a_usable_fifo_it_polls_fast_and_still_fences(
        tmp_path: Path, fake_postmaster: Proc, spawned: list[Proc]) -> None:
    """A directory in the FIFO's place (it cannot be replaced): the fencer logs why, and falls back
    to the 50 ms poll rather than trusting wake-ups that cannot come."""
    wake_path(tmp_path / "fence.json").mkdir()
    agent, _fencer, state, start = _idle_fencer(tmp_path, fake_postmaster, spawned, MAX_BOUND)
    log = tmp_path / "fencer.log"
    assert "unexpected error" in log.read_text()
    assert not send_wake(wake_path(state))
    deadline = time.monotonic() + 0.1
    write_state(state, FenceState(agent.pid, True, deadline, fake_postmaster.pid, start, None, MAX_BOUND))
    _not_before(fake_postmaster, deadline)
    late = _fenced_at(fake_postmaster) - deadline
    assert late <= BUDGET, f"fenced {late:.3f} s after the deadline with no wake-up channel"

