"""One agent per node (pgwarden.agent.single): a second agent is refused while the first runs, and
an agent killed with SIGKILL leaves nothing that stops the next one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO

import pytest

from pgwarden.agent.single import LOCK_FILE, AlreadyRunning, hold_run_dir
from tests.support.wait import wait_for

_HOLD = "import sys, time; from pathlib import Path; from pgwarden.agent.single import hold_run_dir; " \
        "f = hold_run_dir(Path(sys.argv[1])); print('held', flush=True); time.sleep(120)"


def test_a_second_agent_is_refused_until_the_first_is_gone(tmp_path: Path) -> None:
    run_dir = tmp_path / "data.pgwarden"
    first = hold_run_dir(run_dir)
    assert (run_dir / LOCK_FILE).read_text().strip() == str(os.getpid())
    with pytest.raises(AlreadyRunning, match=rf"pid {os.getpid()}\).*{run_dir}"):
        hold_run_dir(run_dir)
    first.close()  # the process ending does the same
    hold_run_dir(run_dir).close()


def test_a_killed_agent_leaves_no_lock_behind(tmp_path: Path) -> None:
    run_dir = tmp_path / "data.pgwarden"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(run_dir)], stdout=subprocess.PIPE, env=env)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"held"
        with pytest.raises(AlreadyRunning, match=f"pid {proc.pid}"):
            hold_run_dir(run_dir)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
    held = wait_for(lambda: _try(run_dir), 5, "the lock to be free after SIGKILL")
    held.close()


def _try(run_dir: Path) -> IO[str] | None:
    try:
        return hold_run_dir(run_dir)
    except AlreadyRunning:
        return None
