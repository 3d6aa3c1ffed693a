"""The agent's wake-up call to its fencer: a byte written to a FIFO next to the state file
(`fence.wake` beside `fence.json`), so that a fencer sleeping between reads of its state looks
again at once when the agent arms it (issue 16; the argument is in docs/architecture.md, "The
lease and the fencer").

A FIFO rather than a signal: a byte stays in the pipe until the fencer reads it, so a wake-up
sent between the fencer's read of the state and its wait ends that wait (no lost wake-up); and
the agent never signals a pid it has not just checked, which could by then belong to another
process (SIGUSR1's default action would kill it). The fencer opens the FIFO for reading and
writing, so it never sees end-of-file; the agent opens it for writing without blocking, which
fails (ENXIO) when no fencer has it open, as with an older fencer that polls instead.

Standard library only: the fencer imports this.
"""

from __future__ import annotations

import os
import select
import stat
import time
from collections.abc import Callable
from pathlib import Path

# How long a fencer with nothing due may go without reading its state, when the state names no
# `idle_bound` (an older agent, or before the agent has read the cluster settings): the shortest
# gap any valid timing leaves between an arm and its deadline, 0.55 s, less WAKE_SLACK.
DEFAULT_BOUND = 0.3
# The most a state's `idle_bound` may ask for: also how late the fencer notices its agent is gone.
MAX_BOUND = 1.0
# Kept back from the gap for what the gap leaves out: a store call overrunning its timeout a
# little, the agent's work between the answer and the write, the fencer's own read and fence.
WAKE_SLACK = 0.25


def wake_path(state_file: Path) -> Path:
    return state_file.with_suffix(".wake")


def send_wake(path: Path) -> bool:
    """Wake the fencer reading `path`; True if a byte is in the pipe. Never raises: without a
    reader (no fencer, or one that predates wake-ups) the fencer's own bound applies."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return False  # ENOENT: no FIFO yet; ENXIO: nobody reading it
    try:
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return False  # never append to something else that took the name
        os.write(fd, b"w")
        return True
    except BlockingIOError:
        return True  # the pipe is full: the fencer has wake-ups waiting already
    except OSError:
        return False
    finally:
        os.close(fd)


class WakeReader:
    """The fencer's end. Without a usable FIFO it waits no longer than `fallback` seconds at a
    time (the fencer passes its fast poll), so a broken channel costs CPU, never safety."""

    def __init__(self, path: Path, fallback: float, report: Callable[[Exception], None]) -> None:
        self.fallback = fallback
        self.report = report
        self.fd: int | None = None
        # Whether the last wait saw a wake-up (or none ran yet): only then is there anything to
        # drain. A byte sent after a wait timed out stays for the next wait, which ends at once.
        self.ready = True
        try:
            self.fd = _open_fifo(path)
        except OSError as e:
            report(e)

    def drain(self) -> None:
        """Consume the wake-ups sent so far. Call it *before* reading the state: one sent after
        the read is then still in the pipe and ends the next wait at once."""
        if self.fd is None or not self.ready:
            return  # an idle fencer skips the read (and the EAGAIN exception it would raise)
        self.ready = False
        try:
            os.read(self.fd, 1 << 20)  # everything a pipe holds; any rest ends the next wait
        except BlockingIOError:
            pass  # empty
        except OSError as e:
            self._broken(e)

    def wait(self, seconds: float) -> None:
        """Sleep up to `seconds`, less if a wake-up is (or already was) sent."""
        seconds = max(0.0, seconds)
        if self.fd is None:
            time.sleep(min(seconds, self.fallback))
            return
        try:
            readable, _, _ = select.select([self.fd], [], [], seconds)
            self.ready = bool(readable)
        except (OSError, ValueError) as e:
            self._broken(e)
            time.sleep(min(seconds, self.fallback))

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def _broken(self, e: Exception) -> None:
        self.report(e)
        if self.fd is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass
        self.fd = None


def _open_fifo(path: Path) -> int:
    """Open (creating it if need be) the FIFO at `path` for reading and writing, non-blocking."""
    try:
        os.mkfifo(path, 0o600)
    except FileExistsError:
        if not stat.S_ISFIFO(os.lstat(path).st_mode):
            os.unlink(path)  # a stray file or link took the name: replace it
            os.mkfifo(path, 0o600)
    fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
    if not stat.S_ISFIFO(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"{path} is not a FIFO")
    return fd
