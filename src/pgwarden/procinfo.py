"""Is a process alive? One answer for the fencer, the PostgreSQL controller and the local
launcher. Standard library only: the fencer imports it and must stay small."""

from __future__ import annotations

import os
from pathlib import Path


def _state(pid: int) -> str | None:
    """The process state letter from /proc (R, S, T, Z, ...); None if it cannot be read."""
    try:
        # os-level reads: the fencer asks 20 times a second (issue 16)
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
        try:
            stat = os.read(fd, 4096).decode("utf-8", "replace")
        finally:
            os.close(fd)
    except OSError:
        return None
    # The state follows the command name, which is in parentheses and may itself hold spaces.
    fields = stat[stat.rfind(")") + 2:].split()
    return fields[0] if fields else None


def zombie(pid: int) -> bool:
    """Exited but not yet reaped (where nothing reaps orphans, a dead postmaster lingers so)."""
    state = _state(pid)
    if state is None:
        # Gone between the signal check and now, unless there is no /proc to read at all.
        return Path("/proc/self/stat").exists()
    return state in ("Z", "X")


def stopped(pid: int) -> bool:
    """Stopped by a signal (SIGSTOP, SIGTSTP) or a tracer: alive, but answering nobody."""
    return _state(pid) in ("T", "t")


def pid_alive(pid: int | None) -> bool:
    """The process exists (whoever owns it) and is not a zombie."""
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    return not zombie(pid)


def cmdline(pid: int) -> bytes:
    """argv of `pid`, NUL-terminated; empty once it is gone (or a zombie). How a supervisor tells
    its own helper (fencer, logical gate) from a process that reuses its pid."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
