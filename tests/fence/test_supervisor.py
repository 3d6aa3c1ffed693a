"""The agent's side: `Fencer.start()` spawns (or adopts) the fencer of its own state file, and
`Fencer.ensure_running()` replaces a fencer that died, and the replacement still fences."""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgwarden.fence.supervisor import Fencer
from tests.fence.test_fencer import Proc
from tests.support.wait import wait_for


@pytest.fixture
def fencer_pids() -> Iterator[list[int]]:
    """Fencers a test caused; the agent (this test process) never dies, so they never exit on
    their own: each one still running a fencer is SIGKILLed by pid, and reaped if ours."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if _is_fencer(pid):
            os.kill(pid, signal.SIGKILL)
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _is_fencer(pid: int, state: Path | None = None) -> bool:
    args = _cmdline(pid).split(b"\0")
    if b"pgwarden.fence.fencer" not in args:
        return False
    return state is None or os.fsencode(os.path.abspath(state)) in args


def _exited(pid: int) -> bool:
    """A zombie or gone (not merely past the point where /proc stops showing its command line)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


def _fencer_pid(f: Fencer, pids: list[int]) -> int:
    pid = int(f.pid_file.read_text())
    pids.append(pid)
    return pid


def _fences(f: Fencer, pm: Proc) -> None:
    f.arm(time.monotonic() - 0.1, pm.pid)
    wait_for(lambda: pm.poll() is not None, 10, "the postmaster fenced")
    wait_for(lambda: "fenced postmaster" in (f.run_dir / "fencer.log").read_text(), 5,
             "the fencing logged (after its kills)")


def test_ensure_running_restarts_a_dead_fencer_and_the_new_one_fences(
        tmp_path: Path, fake_postmaster: Proc, fencer_pids: list[int],
        caplog: pytest.LogCaptureFixture) -> None:
    f = Fencer(tmp_path / "run")
    f.start()
    first = _fencer_pid(f, fencer_pids)
    wait_for(lambda: _is_fencer(first, f.state_file), 5, "the first fencer")
    assert f.ensure_running() is False  # healthy: nothing to do

    os.kill(first, signal.SIGKILL)
    # Dead means reapable: its command line empties a moment before it becomes a zombie, and
    # until then the agent's reap (poll) still sees its own child running.
    wait_for(lambda: _exited(first), 5, "the first fencer dead")
    with caplog.at_level(logging.WARNING, logger="pgwarden.fence"):
        assert f.ensure_running() is True
    assert any(r.levelno == logging.WARNING for r in caplog.records)
    second = _fencer_pid(f, fencer_pids)
    assert second != first
    wait_for(lambda: _is_fencer(second, f.state_file), 5, "the new fencer")
    assert f.ensure_running() is False
    _fences(f, fake_postmaster)


def test_start_does_not_adopt_another_nodes_fencer(
        tmp_path: Path, fake_postmaster: Proc, fencer_pids: list[int]) -> None:
    """A stale pid file may name a pid now used by another node's fencer on the same host."""
    other = Fencer(tmp_path / "other")
    other.start()
    other_pid = _fencer_pid(other, fencer_pids)
    wait_for(lambda: _is_fencer(other_pid, other.state_file), 5, "the other node's fencer")

    mine = Fencer(tmp_path / "mine")
    mine.run_dir.mkdir()
    mine.pid_file.write_text(str(other_pid))
    mine.start()
    my_pid = _fencer_pid(mine, fencer_pids)
    assert my_pid != other_pid
    wait_for(lambda: _is_fencer(my_pid, mine.state_file), 5, "a fencer of my own state file")
    _fences(mine, fake_postmaster)


def test_a_restarted_agent_adopts_its_live_fencer(
        tmp_path: Path, fake_postmaster: Proc, fencer_pids: list[int]) -> None:
    before = Fencer(tmp_path / "run")
    before.start()
    pid = _fencer_pid(before, fencer_pids)
    wait_for(lambda: _is_fencer(pid, before.state_file), 5, "the fencer")

    after = Fencer(tmp_path / "run")  # the agent restarted: same run directory
    after.start()
    assert int(after.pid_file.read_text()) == pid
    assert after.ensure_running() is False
    _fences(after, fake_postmaster)


def test_ensure_running_before_start_starts_the_fencer(
        tmp_path: Path, fake_postmaster: Proc, fencer_pids: list[int]) -> None:
    f = Fencer(tmp_path / "run")
    assert f.ensure_running() is True
    pid = _fencer_pid(f, fencer_pids)
    wait_for(lambda: _is_fencer(pid, f.state_file), 5, "the fencer")
    assert f.ensure_running() is False
    _fences(f, fake_postmaster)
