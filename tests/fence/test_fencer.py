"""The fencer process on its own: it kills the recorded postmaster and its children once the
deadline passes while armed, never before, never a process that merely reused the PID, and it
exits once its agent is gone and nothing is left to fence.

Every test that shows something survived also shows, with the same fencer, that it does kill
when it should: a fencer that does nothing fails this file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from pgwarden.fence import fencer as fencer_mod
from pgwarden.fence.state import FenceState, alive, process_start_time, write_state
from tests.support.wait import wait_for

Proc = subprocess.Popen[bytes]


@contextmanager
def running_fake_postmaster() -> Iterator[Proc]:
    """A parent with two children, standing in for a postmaster and its backends. Everything is
    killed by pid afterwards (children checked by start time: they may be orphaned by then)."""
    code = "import subprocess, time; [subprocess.Popen(['sleep', '60']) for _ in range(2)]; time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    kids: list[tuple[int, int | None]] = []
    try:
        def two_backends() -> list[int] | None:
            found = _children(proc.pid)
            return found if len(found) == 2 else None

        kids = [(k, process_start_time(k)) for k in wait_for(two_backends, 10, "the fake backends")]
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)
        for pid, start in kids:
            if start is not None and process_start_time(pid) == start:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


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


def _spawn_fencer(spawned: list[Proc], state: Path) -> Proc:
    argv = [sys.executable, "-m", "pgwarden.fence.fencer", str(state)]
    proc = subprocess.Popen(argv, start_new_session=True)
    spawned.append(proc)
    return proc


def _watching(fencer: Proc, log: Path) -> None:
    """Wait until the fencer has read its state (it logs that once): only then does watching
    it do nothing mean anything."""
    wait_for(lambda: f"fencer {fencer.pid} watching" in log.read_text(), 10, "the fencer watching")


def _agent_stand_in(spawned: list[Proc]) -> Proc:
    proc = subprocess.Popen(["sleep", "60"])
    spawned.append(proc)
    return proc


def _armed(agent: Proc, deadline: float, pm: Proc, start: int | None = None) -> FenceState:
    return FenceState(agent.pid, True, deadline, pm.pid,
                      process_start_time(pm.pid) if start is None else start)


def _holds(cond: Callable[[], bool], seconds: float, what: str) -> None:
    """Assert `cond` stays true for `seconds` (what a "nothing happened" check must watch)."""
    end = time.monotonic() + seconds
    while True:
        assert cond(), what
        if time.monotonic() >= end:
            return
        time.sleep(0.05)


def _fenced(pm: Proc, kids: list[int], log: Path) -> None:
    # Generous: a loaded machine may take seconds to start the fencer's interpreter. How soon
    # after the deadline it acts is checked where it matters (test_fencer_idle.py's budget).
    wait_for(lambda: pm.poll() is not None, 10, "the postmaster killed")
    wait_for(lambda: not any(alive(k) for k in kids), 10, "every backend killed")
    # The fencer logs after its kills: the line may follow the postmaster's death by a moment.
    wait_for(lambda: "fenced postmaster" in log.read_text(), 5, "the fencing logged")


def test_kills_postmaster_and_backends_at_the_deadline_not_before(
        tmp_path: Path, fake_postmaster: Proc, spawned: list[Proc]) -> None:
    agent = _agent_stand_in(spawned)
    kids = _children(fake_postmaster.pid)
    state = tmp_path / "fence.json"
    deadline = time.monotonic() + 1.5
    write_state(state, _armed(agent, deadline, fake_postmaster))
    fencer = _spawn_fencer(spawned, state)
    while time.monotonic() < deadline - 0.2:
        assert fake_postmaster.poll() is None, "fenced before the deadline"
        time.sleep(0.05)
    _fenced(fake_postmaster, kids, tmp_path / "fencer.log")
    assert time.monotonic() >= deadline
    agent.kill()
    agent.wait(5)
    wait_for(lambda: fencer.poll() is not None, 5, "the fencer to exit once its agent is gone")


def test_a_renewed_deadline_keeps_the_primary_running(
        tmp_path: Path, fake_postmaster: Proc, spawned: list[Proc]) -> None:
    agent = _agent_stand_in(spawned)
    kids = _children(fake_postmaster.pid)
    state = tmp_path / "fence.json"
    pm = fake_postmaster.pid
    start = process_start_time(pm)
    write_state(state, FenceState(agent.pid, True, time.monotonic() + 5.0, pm, start))
    fencer = _spawn_fencer(spawned, state)
    _watching(fencer, tmp_path / "fencer.log")
    end = time.monotonic() + 3.0
    while time.monotonic() < end:  # the agent keeps renewing
        write_state(state, FenceState(agent.pid, True, time.monotonic() + 1.0, pm, start))
        assert fake_postmaster.poll() is None, "fenced although the deadline was renewed"
        assert fencer.poll() is None, "the fencer exited while its agent lives"
        time.sleep(0.1)
    # Disarmed (demoted): the deadline passing changes nothing...
    deadline = time.monotonic() + 0.2
    write_state(state, FenceState(agent.pid, False, deadline, pm, start))
    _holds(lambda: fake_postmaster.poll() is None and fencer.poll() is None,
           deadline + 0.6 - time.monotonic(), "the disarmed primary and its fencer both running")
    # ...yet the same fencer still acts: armed again with a deadline already passed, it fences.
    write_state(state, FenceState(agent.pid, True, time.monotonic() - 0.1, pm, start))
    _fenced(fake_postmaster, kids, tmp_path / "fencer.log")
    agent.kill()
    agent.wait(5)
    wait_for(lambda: fencer.poll() is not None, 5, "the fencer to exit once its agent is gone")


def test_never_kills_a_process_that_reused_the_pid(
        tmp_path: Path, fake_postmaster: Proc, spawned: list[Proc]) -> None:
    agent = _agent_stand_in(spawned)
    kids = _children(fake_postmaster.pid)
    state = tmp_path / "fence.json"
    wrong_start = (process_start_time(fake_postmaster.pid) or 0) + 12345
    write_state(state, _armed(agent, time.monotonic() - 0.1, fake_postmaster, wrong_start))
    fencer = _spawn_fencer(spawned, state)
    _watching(fencer, tmp_path / "fencer.log")
    _holds(lambda: fake_postmaster.poll() is None and fencer.poll() is None, 1.0,
           "the process with another start time and the fencer both running")
    # The same record with the right start time is the postmaster: now it is fenced.
    write_state(state, _armed(agent, time.monotonic() - 0.1, fake_postmaster))
    _fenced(fake_postmaster, kids, tmp_path / "fencer.log")
    agent.kill()
    agent.wait(5)
    wait_for(lambda: fencer.poll() is not None, 5, "the fencer to exit")


def test_dead_agent_armed_primary_is_fenced_then_fencer_exits(
        tmp_path: Path, fake_postmaster: Proc, spawned: list[Proc]) -> None:
    agent = _agent_stand_in(spawned)
    kids = _children(fake_postmaster.pid)
    state = tmp_path / "fence.json"
    write_state(state, _armed(agent, time.monotonic() + 1.0, fake_postmaster))
    fencer = _spawn_fencer(spawned, state)
    agent.kill()  # the agent dies while leading: the fencer alone must stop the primary
    agent.wait(5)
    _fenced(fake_postmaster, kids, tmp_path / "fencer.log")
    wait_for(lambda: fencer.poll() is not None, 5, "the fencer to exit")


def test_a_postmaster_recorded_after_the_deadline_passed_is_still_fenced(
        tmp_path: Path, fake_postmaster: Proc, spawned: list[Proc]) -> None:
    """The agent arms before starting PostgreSQL (no pid yet), then records the pid under the
    same deadline. If that deadline passed in between, the postmaster must still be stopped."""
    agent = _agent_stand_in(spawned)
    kids = _children(fake_postmaster.pid)
    state = tmp_path / "fence.json"
    deadline = time.monotonic() + 0.5
    write_state(state, FenceState(agent.pid, True, deadline, None, None))
    fencer = _spawn_fencer(spawned, state)
    _watching(fencer, tmp_path / "fencer.log")
    _holds(lambda: fencer.poll() is None, deadline + 0.5 - time.monotonic(),
           "the fencer running past the deadline with nothing recorded yet")
    write_state(state, _armed(agent, deadline, fake_postmaster))
    _fenced(fake_postmaster, kids, tmp_path / "fencer.log")
    # Nothing left to fence: once the agent is gone, so is the fencer.
    assert fencer.poll() is None
    agent.kill()
    agent.wait(5)
    wait_for(lambda: fencer.poll() is not None, 5, "the fencer to exit once its agent is gone")


def test_the_fencer_exits_with_its_agent_when_no_postmaster_is_recorded(
        tmp_path: Path, spawned: list[Proc]) -> None:
    agent = _agent_stand_in(spawned)
    state = tmp_path / "fence.json"
    write_state(state, FenceState(agent.pid, True, time.monotonic() - 1.0, None, None))
    fencer = _spawn_fencer(spawned, state)
    _watching(fencer, tmp_path / "fencer.log")
    _holds(lambda: fencer.poll() is None, 0.5, "the fencer running while its agent lives")
    agent.kill()
    agent.wait(5)
    wait_for(lambda: fencer.poll() is not None, 5, "the fencer to exit once its agent is gone")


def test_fence_survives_the_postmaster_vanishing_before_the_final_kill(
        tmp_path: Path, fake_postmaster: Proc, monkeypatch: pytest.MonkeyPatch) -> None:
    pm = fake_postmaster.pid
    kids = _children(pm)
    st = FenceState(0, True, 0.0, pm, process_start_time(pm))
    real_kill = os.kill

    def racing_kill(pid: int, sig: int) -> None:
        real_kill(pid, sig)
        if pid == pm and sig == signal.SIGSTOP:  # it dies (and is reaped) right after the freeze
            real_kill(pid, signal.SIGKILL)
            fake_postmaster.wait(5)

    monkeypatch.setattr(os, "kill", racing_kill)
    log = tmp_path / "fencer.log"
    assert fencer_mod.fence(st, log) is True
    monkeypatch.undo()
    assert fake_postmaster.poll() is not None
    wait_for(lambda: not any(alive(k) for k in kids), 3, "every backend killed")
    assert "fenced postmaster" in log.read_text()


@pytest.mark.timeout(30)
def test_an_unexpected_error_is_logged_and_the_fencer_goes_on(
        tmp_path: Path, fake_postmaster: Proc, monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "fence.json"
    # Agent gone (pid 0), deadline passed: run() fences, then returns.
    write_state(state, FenceState(0, True, time.monotonic() - 1.0, fake_postmaster.pid,
                                  process_start_time(fake_postmaster.pid)))
    real_children_of = fencer_mod.children_of
    failures = [OSError("injected /proc hiccup")]

    def flaky_children_of(pid: int) -> list[int]:
        if failures:
            raise failures.pop()
        return real_children_of(pid)

    monkeypatch.setattr(fencer_mod, "children_of", flaky_children_of)
    assert fencer_mod.run(state) == 0
    wait_for(lambda: fake_postmaster.poll() is not None, 3, "the postmaster killed")
    log = (tmp_path / "fencer.log").read_text()
    assert "injected /proc hiccup" in log
    assert "fenced postmaster" in log


def test_a_malformed_state_does_not_kill_the_fencer(
        tmp_path: Path, fake_postmaster: Proc, spawned: list[Proc]) -> None:
    agent = _agent_stand_in(spawned)
    kids = _children(fake_postmaster.pid)
    state = tmp_path / "fence.json"
    write_state(state, _armed(agent, time.monotonic() + 30.0, fake_postmaster))
    fencer = _spawn_fencer(spawned, state)
    _watching(fencer, tmp_path / "fencer.log")
    bad = {"agent_pid": agent.pid, "armed": True, "deadline": time.monotonic() - 1.0,
           "postmaster_pid": "not a pid", "postmaster_start": None}
    state.write_text(json.dumps(bad))
    _holds(lambda: fencer.poll() is None, 1.0, "the fencer running after a malformed state")
    write_state(state, _armed(agent, time.monotonic() - 0.1, fake_postmaster))
    _fenced(fake_postmaster, kids, tmp_path / "fencer.log")


def test_a_vanished_state_file_does_not_disarm_the_fencer(
        tmp_path: Path, fake_postmaster: Proc, spawned: list[Proc]) -> None:
    """The last state read stays in force: losing the file must not cancel a pending fence."""
    agent = _agent_stand_in(spawned)
    kids = _children(fake_postmaster.pid)
    state = tmp_path / "fence.json"
    deadline = time.monotonic() + 1.0
    write_state(state, _armed(agent, deadline, fake_postmaster))
    fencer = _spawn_fencer(spawned, state)
    _watching(fencer, tmp_path / "fencer.log")
    _holds(lambda: fencer.poll() is None, 0.3, "the fencer running")
    state.unlink()
    _fenced(fake_postmaster, kids, tmp_path / "fencer.log")
    assert time.monotonic() >= deadline


def test_a_postmaster_the_agent_never_recorded_is_found_through_postmaster_pid(
        tmp_path: Path, spawned: list[Proc]) -> None:
    """The agent armed (no pid yet), started PostgreSQL and froze before recording its pid: the
    fencer finds the postmaster through the data directory's postmaster.pid. A stale file naming
    a process of another directory is no target, nor is a server in standby mode."""
    data = tmp_path / "data"
    other = tmp_path / "elsewhere"
    data.mkdir()
    other.mkdir()
    stranger = subprocess.Popen(["sleep", "60"], cwd=other)
    spawned.append(stranger)
    (data / "postmaster.pid").write_text(f"{stranger.pid}\n{data}\n")
    agent = _agent_stand_in(spawned)
    state = tmp_path / "fence.json"
    write_state(state, FenceState(agent.pid, True, time.monotonic() - 0.1, None, None, str(data)))
    fencer = _spawn_fencer(spawned, state)
    _watching(fencer, tmp_path / "fencer.log")
    _holds(lambda: stranger.poll() is None and fencer.poll() is None, 0.5,
           "a process that merely reused the pid in a stale postmaster.pid was killed")
    postmaster = subprocess.Popen(["sleep", "60"], cwd=data)
    spawned.append(postmaster)
    # In standby mode (standby.signal present) it takes no writes: not a target.
    (data / "standby.signal").write_text("")
    (data / "postmaster.pid").write_text(f"{postmaster.pid}\n{data}\n")
    _holds(lambda: postmaster.poll() is None, 0.5, "a standby's postmaster was fenced")
    (data / "standby.signal").unlink()  # promoted: now it could acknowledge commits
    wait_for(lambda: postmaster.poll() is not None, 3, "the unrecorded postmaster killed")
    assert stranger.poll() is None
    assert f"fenced postmaster {postmaster.pid}" in (tmp_path / "fencer.log").read_text()
