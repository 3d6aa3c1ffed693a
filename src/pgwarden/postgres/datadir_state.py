"""The loop's two looks at the data directory, in os-level calls: is it a data directory
(`data_state`), and which live postmaster runs in it (`postmaster_pid`).

Both run every loop, and through pathlib (path objects, the text layer, a Python-level realpath)
they were about a fifth of an idle replica's loop (issue 16). The answers are pathlib's, error
for error: an error pathlib ignores (`_IGNORED`) means "absent", any other is raised as before.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from pgwarden.core.model import DataState
from pgwarden.procinfo import pid_alive

# The errors pathlib's exists() and is_file() take for "no such file" (pathlib._IGNORED_ERRNOS);
# any other OSError they raise.
_IGNORED = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP})


def _stat_mode(path: str) -> int | None:
    """st_mode of `path`, None where pathlib would say it does not exist (others raise)."""
    try:
        return os.stat(path).st_mode
    except OSError as e:
        if e.errno in _IGNORED:
            return None
        raise


def exists(path: str) -> bool:
    """pathlib's `Path(path).exists()`, in one os call."""
    return _stat_mode(path) is not None


def _is_file(path: str) -> bool:
    mode = _stat_mode(path)
    return mode is not None and (mode & 0o170000) == 0o100000  # S_ISREG


def data_state(data_dir: str) -> DataState:
    """EMPTY (absent, or no entries), VALID (PG_VERSION and global/pg_control are files), else
    BROKEN; an error reading the directory itself is BROKEN."""
    try:
        if _stat_mode(data_dir) is None:
            return DataState.EMPTY
        with os.scandir(data_dir) as entries:
            if next(entries, None) is None:
                return DataState.EMPTY
    except OSError:
        return DataState.BROKEN
    if _is_file(f"{data_dir}/PG_VERSION") and _is_file(f"{data_dir}/global/pg_control"):
        return DataState.VALID
    return DataState.BROKEN


def _read_text(path: str) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        parts: list[bytes] = []
        while chunk := os.read(fd, 65536):
            parts.append(chunk)
    finally:
        os.close(fd)
    return b"".join(parts).decode("utf-8")


def postmaster_pid(data_dir: str) -> int | None:
    """PID of the live postmaster of `data_dir` (absolute), None when not running (a stale
    postmaster.pid too)."""
    try:
        first = _read_text(f"{data_dir}/postmaster.pid").splitlines()[0]
        pid = int(first.strip())
    except (OSError, ValueError, IndexError):
        return None
    if not pid_alive(pid):
        return None
    # A reused PID is another process: the postmaster's cwd is its data directory.
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return pid
    # The kernel's cwd path has no symlinks, "." or "..": if it is the data directory's path as
    # given, resolving that path would give it back, so skip resolving it (component by
    # component, in Python). Otherwise compare as before.
    if cwd == data_dir:
        return pid
    return pid if Path(cwd) == Path(data_dir).resolve() else None
