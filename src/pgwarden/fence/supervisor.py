"""The agent's side of fencing: start (or reuse) the fencer, keep it running, and keep its state
file current."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from pgwarden.core.settings import LEASE_MARGIN
from pgwarden.fence.state import FenceState, process_start_time, read_state, write_state
from pgwarden.fence.wake import MAX_BOUND, WAKE_SLACK, send_wake, wake_path
from pgwarden.procinfo import cmdline

log = logging.getLogger("pgwarden.fence")


class Fencer:
    def __init__(self, run_dir: Path, data_dir: Path | None = None) -> None:
        self.run_dir = run_dir
        # Lets the fencer find a postmaster we started but could not record (see state.py).
        self.data_dir = str(data_dir) if data_dir is not None else None
        self.state_file = run_dir / "fence.json"
        self.pid_file = run_dir / "fencer.pid"
        self.wake_file = wake_path(self.state_file)
        self._last: FenceState | None = None
        self._pid = 0  # the fencer watching our state file, as far as we know
        self._bound: float | None = None  # the fencer's idle_bound, once set_timing() ran
        self._proc: subprocess.Popen[bytes] | None = None  # set when we spawned it
        # The fencer's argv ends with the state file; an absolute path tells it apart from the
        # fencers of other nodes on this host.
        self._state_arg = os.path.abspath(self.state_file)
        self._tail = b"\0-m\0pgwarden.fence.fencer\0" + os.fsencode(self._state_arg) + b"\0"

    def start(self) -> None:
        """Spawn the fencer unless one from an earlier agent run still watches our state file."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        prev = read_state(self.state_file)
        # Carry an armed deadline over: the postmaster may still be a primary from before. Not
        # the idle bound: the timing may have changed since; set_timing() writes ours.
        st = FenceState(os.getpid(), prev.armed if prev else False, prev.deadline if prev else 0.0,
                        prev.postmaster_pid if prev else None, prev.postmaster_start if prev else None,
                        self.data_dir, self._bound)
        write_state(self.state_file, st)
        self._last = st
        send_wake(self.wake_file)  # a fencer we reuse learns our pid now
        try:
            self._pid = int(self.pid_file.read_text())
        except (OSError, ValueError):
            self._pid = 0
        if self._ensure():
            log.info("started fencer pid %d (state %s)", self._pid, self.state_file)
        else:
            log.info("reusing fencer pid %d", self._pid)

    def ensure_running(self) -> bool:
        """Start a new fencer if ours is gone; True if one had to be started. Cheap enough for
        every agent loop: a reap of our own child, or one read of /proc/<pid>/cmdline for a fencer an
        earlier agent run started."""
        if self._last is None:  # start() never ran: it writes the state the fencer needs first
            log.warning("ensure_running() before start(): starting the fencer")
            self.start()
            return self._proc is not None  # set only when start() spawned a new fencer
        if not self._ensure():
            return False
        log.warning("the fencer was not running: started a new one, pid %d", self._pid)
        return True

    def _ensure(self) -> bool:
        if self._proc is not None:
            if self._proc.poll() is None:
                # Our own child, not reaped yet: its pid cannot belong to anyone else, so the
                # fencer we spawned still runs (no /proc read every loop, issue 16).
                return False
            self._proc = None  # reaped: a zombie would keep its pid
        if self._pid > 0 and cmdline(self._pid).endswith(self._tail):
            return False
        # The new fencer reads the file first: make sure it holds what we last told it.
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self._last is not None:
            write_state(self.state_file, self._last)
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "pgwarden.fence.fencer", self._state_arg],
            start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, close_fds=True,
        )
        self._pid = self._proc.pid
        self.pid_file.write_text(str(self._pid))
        return True

    def set_timing(self, ttl: float, retry_timeout: float) -> None:
        """Tell the fencer how long it may go without reading its state under these settings
        (call it with the settings in force before any arm that uses them)."""
        self._bound = idle_bound(ttl, retry_timeout)
        last = self._last
        if last is not None and last.idle_bound != self._bound:
            self._write(last.armed, last.deadline, last.postmaster_pid)

    def arm(self, deadline: float, postmaster_pid: int | None) -> None:
        self._write(True, deadline, postmaster_pid)

    def disarm(self) -> None:
        last = self._last
        self._write(False, 0.0, last.postmaster_pid if last else None)

    @property
    def armed(self) -> bool:
        return bool(self._last and self._last.armed)

    @property
    def deadline(self) -> float:
        """The armed deadline (monotonic), 0 when not armed."""
        return self._last.deadline if self._last and self._last.armed else 0.0

    def _write(self, armed: bool, deadline: float, pm: int | None) -> None:
        start = process_start_time(pm) if pm else None
        st = FenceState(os.getpid(), armed, deadline, pm, start, self.data_dir, self._bound)
        if st != self._last:
            write_state(self.state_file, st)
            prev, self._last = self._last, st
            if _wake_needed(prev, st):
                send_wake(self.wake_file)


def idle_bound(ttl: float, retry_timeout: float) -> float:
    """The longest the fencer may sleep without reading its state under this timing: less than
    the time between the agent arming after a store call (at most retry_timeout after sending
    it) and the deadline (ttl - LEASE_MARGIN after sending it), so that even a lost wake-up is
    read before the deadline (docs/architecture.md, "The lease and the fencer")."""
    gap = ttl - LEASE_MARGIN - retry_timeout
    return max(0.05, min(MAX_BOUND, gap - WAKE_SLACK))  # the fencer never waits less than 0.05 s


def _wake_needed(prev: FenceState | None, st: FenceState) -> bool:
    """Anything but a renewal (armed before and after, the same postmaster and bound, a later
    deadline) wakes the fencer: a sleeping fencer reads the state again at the old deadline at
    the latest, early enough only for a deadline that moved later (docs/architecture.md)."""
    return not (prev is not None and prev.armed and st.armed and st.deadline >= prev.deadline
                and (prev.postmaster_pid, prev.postmaster_start, prev.data_dir, prev.idle_bound)
                == (st.postmaster_pid, st.postmaster_start, st.data_dir, st.idle_bound))
