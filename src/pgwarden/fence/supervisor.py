"""The agent's side of fencing: start (or reuse) the fencer and keep its state file current."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from pgwarden.fence.state import FenceState, alive, process_start_time, read_state, write_state

log = logging.getLogger("pgwarden.fence")


class Fencer:
    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.state_file = run_dir / "fence.json"
        self.pid_file = run_dir / "fencer.pid"
        self._last: FenceState | None = None

    def start(self) -> None:
        """Spawn the fencer unless one from an earlier agent run still watches our state file."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        prev = read_state(self.state_file)
        # Carry an armed deadline over: the postmaster may still be a primary from before.
        st = FenceState(os.getpid(), prev.armed if prev else False, prev.deadline if prev else 0.0,
                        prev.postmaster_pid if prev else None, prev.postmaster_start if prev else None)
        write_state(self.state_file, st)
        self._last = st
        try:
            pid = int(self.pid_file.read_text())
        except (OSError, ValueError):
            pid = 0
        if pid and alive(pid) and b"pgwarden.fence.fencer" in _cmdline(pid):
            log.info("reusing fencer pid %d", pid)
            return
        proc = subprocess.Popen(
            [sys.executable, "-m", "pgwarden.fence.fencer", str(self.state_file)],
            start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, close_fds=True,
        )
        self.pid_file.write_text(str(proc.pid))
        log.info("started fencer pid %d (state %s)", proc.pid, self.state_file)

    def arm(self, deadline: float, postmaster_pid: int | None) -> None:
        self._write(True, deadline, postmaster_pid)

    def disarm(self) -> None:
        last = self._last
        self._write(False, 0.0, last.postmaster_pid if last else None)

    @property
    def armed(self) -> bool:
        return bool(self._last and self._last.armed)

    def _write(self, armed: bool, deadline: float, pm: int | None) -> None:
        start = process_start_time(pm) if pm else None
        st = FenceState(os.getpid(), armed, deadline, pm, start)
        if st != self._last:
            write_state(self.state_file, st)
            self._last = st


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
