"""The fencer process on its own: it kills the recorded postmaster and its children once the
deadline passes while armed, never before, never a process that merely reused the PID, and it
exits once its agent is gone and nothing is left to fence."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgwarden.fence.state import FenceState, alive, process_start_time, write_state
from tests.support.wait import wait_for


@pytest.fixture
def fake_postmaster() -> Iterator[subprocess.Popen[bytes]]:
    """A parent with two children, standing in for a postmaster and its backends."""
    code = "import subprocess, time; [subprocess.Popen(['sleep', '60']) for _ in range(2)]; time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    wait_for(lambda: len(_children(proc.pid)) == 2, 10, "the fake backends")
    yield proc
    for pid in [proc.pid, *_children(proc.pid)]:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    proc.wait(5)


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                status = Path(f"/proc/{entry}/status").read_text()
            except OSError:
                continue
            if f"\nPPid:\t{pid}\n" in status:
                out.append(int(entry))
    return out


def _spawn_fencer(state: Path) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "pgwarden.fence.fencer", str(state)]
    return subprocess.Popen(argv, start_new_session=True)


def _agent_stand_in() -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sleep", "60"])


def test_kills_postmaster_and_backends_at_the_deadline_not_before(
        tmp_path: Path, fake_postmaster: subprocess.Popen[bytes]) -> None:
    agent = _agent_stand_in()
    kids = _children(fake_postmaster.pid)
    state = tmp_path / "fence.json"
    deadline = time.monotonic() + 1.5
    write_state(state, FenceState(agent.pid, True, deadline, fake_postmaster.pid,
                                  process_start_time(fake_postmaster.pid)))
    fencer = _spawn_fencer(state)
    try:
        while time.monotonic() < deadline - 0.2:
            assert fake_postmaster.poll() is None, "fenced before the deadline"
            time.sleep(0.05)
        wait_for(lambda: fake_postmaster.poll() is not None, 3, "the postmaster killed")
        assert time.monotonic() >= deadline
        wait_for(lambda: not any(alive(k) for k in kids), 3, "every backend killed")
        assert "fenced postmaster" in (tmp_path / "fencer.log").read_text()
    finally:
        agent.kill()
        agent.wait(5)
        fencer.wait(10)


def test_a_renewed_deadline_keeps_the_primary_running(
        tmp_path: Path, fake_postmaster: subprocess.Popen[bytes]) -> None:
    agent = _agent_stand_in()
    state = tmp_path / "fence.json"
    start = process_start_time(fake_postmaster.pid)
    write_state(state, FenceState(agent.pid, True, time.monotonic() + 1.0, fake_postmaster.pid, start))
    fencer = _spawn_fencer(state)
    try:
        end = time.monotonic() + 3.0
        while time.monotonic() < end:  # the agent keeps renewing
            renewed = FenceState(agent.pid, True, time.monotonic() + 1.0, fake_postmaster.pid, start)
            write_state(state, renewed)
            assert fake_postmaster.poll() is None
            time.sleep(0.1)
        # Disarmed (demoted): the deadline passing changes nothing.
        write_state(state, FenceState(agent.pid, False, time.monotonic() + 0.2, fake_postmaster.pid, start))
        time.sleep(0.6)
        assert fake_postmaster.poll() is None
    finally:
        agent.kill()
        agent.wait(5)
    wait_for(lambda: fencer.poll() is not None, 5, "the fencer to exit once its agent is gone")


def test_never_kills_a_process_that_reused_the_pid(
        tmp_path: Path, fake_postmaster: subprocess.Popen[bytes]) -> None:
    agent = _agent_stand_in()
    state = tmp_path / "fence.json"
    wrong_start = (process_start_time(fake_postmaster.pid) or 0) + 12345
    write_state(state, FenceState(agent.pid, True, time.monotonic() + 0.3, fake_postmaster.pid, wrong_start))
    fencer = _spawn_fencer(state)
    try:
        time.sleep(1.0)
        assert fake_postmaster.poll() is None
    finally:
        agent.kill()
        agent.wait(5)
    wait_for(lambda: fencer.poll() is not None, 5, "the fencer to exit")


def test_dead_agent_armed_primary_is_fenced_then_fencer_exits(
        tmp_path: Path, fake_postmaster: subprocess.Popen[bytes]) -> None:
    agent = _agent_stand_in()
    state = tmp_path / "fence.json"
    write_state(state, FenceState(agent.pid, True, time.monotonic() + 1.0, fake_postmaster.pid,
                                  process_start_time(fake_postmaster.pid)))
    fencer = _spawn_fencer(state)
    agent.kill()  # the agent dies while leading: the fencer alone must stop the primary
    agent.wait(5)
    wait_for(lambda: fake_postmaster.poll() is not None, 4, "the postmaster fenced")
    wait_for(lambda: fencer.poll() is not None, 5, "the fencer to exit")
