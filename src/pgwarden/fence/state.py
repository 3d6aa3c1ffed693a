"""The file through which the agent tells its fencer the lease deadline (SAFETY rule 13).

The fencer knows nothing else: which postmaster to stop, by when, and whether the agent that
wrote it is still alive. Times are CLOCK_MONOTONIC seconds, which Linux shares across processes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from pgwarden.procinfo import pid_alive


@dataclass(frozen=True)
class FenceState:
    agent_pid: int
    armed: bool  # True while this node may accept writes under a lease
    deadline: float  # monotonic seconds; past it the postmaster must not run as primary
    postmaster_pid: int | None = None
    postmaster_start: int | None = None  # /proc/<pid>/stat starttime, guards against PID reuse
    # The data directory: past the deadline the fencer also stops a postmaster it finds through
    # its postmaster.pid, one the agent started but could not record (frozen or dead meanwhile).
    data_dir: str | None = None
    # The longest the fencer may go without reading this file while nothing is due (issue 16;
    # docs/architecture.md, "The lease and the fencer"). Optional: an older agent writes none and
    # an older fencer ignores it; without it, or with a value that is not a positive number, the
    # fencer uses a bound that is safe for every timing the settings allow.
    idle_bound: float | None = None


def write_state(path: Path, st: FenceState) -> None:
    """Write `st` to a temporary file, then rename it over `path` (the fencer never reads half a
    state). os-level calls, the same bytes as `Path.write_text(json.dumps(asdict(st)))`: the
    leader's agent writes a new deadline every loop (issue 16)."""
    tmp = path.with_suffix(".tmp")
    data = json.dumps(vars(st)).encode()  # the fields in order, as asdict gives them
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_bytes(path: str) -> bytes:
    """The whole (small) file: one open, reads and a close, without pathlib's and the text
    layer's overhead (the fencer reads its state on every wake-up, issue 16)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        parts: list[bytes] = []
        while chunk := os.read(fd, 8192):  # not 64 KiB: each read allocates its full size
            parts.append(chunk)
        return b"".join(parts)
    finally:
        os.close(fd)


# The last text parsed and what it said: an unchanged file (a replica's, always) is not parsed again.
_parsed: tuple[bytes, FenceState] | None = None


def read_state(path: Path) -> FenceState | None:
    """The state in `path`, or None if it is missing or malformed."""
    global _parsed
    try:
        raw = read_bytes(str(path))
        last = _parsed
        if last is not None and last[0] == raw:
            return last[1]
        d = json.loads(raw)
        st = FenceState(
            agent_pid=int(d["agent_pid"]),
            armed=_bool(d["armed"]),
            deadline=float(d["deadline"]),
            postmaster_pid=_opt_int(d.get("postmaster_pid")),
            postmaster_start=_opt_int(d.get("postmaster_start")),
            data_dir=_opt_str(d.get("data_dir")),
            idle_bound=_bound(d.get("idle_bound")),
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    _parsed = (raw, st)
    return st


def _opt_int(v: object) -> int | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"not an integer: {v!r}")
    return v


def _bound(v: object) -> float | None:
    """A positive number of seconds, else None (never a reason to reject the rest of the state:
    the armed flag and deadline must be read whatever this says)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < float("inf"):
        return None
    return float(v)


def _opt_str(v: object) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str):
        raise ValueError(f"not a string: {v!r}")
    return v


def postmaster_of(data_dir: str) -> int | None:
    """The live postmaster of `data_dir`: the pid in its postmaster.pid, if that process runs
    with the data directory as its working directory (a postmaster chdirs there at start), so a
    stale file whose pid was reused by another process never names a victim."""
    try:
        first = (Path(data_dir) / "postmaster.pid").read_text().split("\n", 1)[0].strip()
        pid = int(first)
    except (OSError, ValueError):
        return None
    if pid <= 0 or not alive(pid):
        return None
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return None
    return pid if os.path.realpath(cwd) == os.path.realpath(data_dir) else None


def _bool(v: object) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"not a boolean: {v!r}")
    return v


def process_start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks), or None if gone."""
    try:
        raw = read_bytes(f"/proc/{pid}/stat").decode("utf-8", "replace")
    except OSError:
        return None
    # The command name (field 2) may contain spaces; it ends at the last ')'.
    fields = raw[raw.rfind(")") + 2:].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def alive(pid: int | None) -> bool:
    return pid_alive(pid)
