"""Background processes of a local cluster: start them detached, tell whether a recorded PID is
still the process we started (PIDs get reused), stop them, and stop a PostgreSQL server that an
agent left behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from pgwarden.procinfo import pid_alive

# Popen objects of children started by this process: `local up` run in-process (tests) must reap
# them, or an exited agent stays a zombie that looks alive to kill(pid, 0).
_children: dict[int, subprocess.Popen[bytes]] = {}


def spawn(argv: Sequence[str], log: Path, cwd: Path, env: dict[str, str] | None = None) -> int:
    """Start `argv` in its own session (a Ctrl-C or the end of `local up` does not reach it),
    output appended to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [str(a) for a in argv], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            cwd=cwd, env=env, start_new_session=True, close_fds=True,
        )
    _children[proc.pid] = proc
    return proc.pid


def cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [a.decode("utf-8", "replace") for a in raw.split(b"\0") if a]


def alive(pid: int) -> bool:
    child = _children.get(pid)
    if child is not None and child.poll() is not None:
        del _children[pid]
        return False
    return pid_alive(pid)


def is_ours(pid: int | None, marker: str) -> bool:
    """Alive and its command line still names `marker` (a path unique to this cluster), so a
    reused PID is never signalled."""
    if pid is None or not alive(pid):
        return False
    if pid in _children:
        # Our own child (alive() reaps it once it exits, so its PID is not reused): judge it
        # by the command we started, not by /proc, which shows our command line, or nothing,
        # while it is between fork and exec. Under load a readiness check landed right there
        # and called a starting etcd or PgBouncer "exited" with an empty log.
        started = _children[pid].args  # the list spawn() passed
        return isinstance(started, list) and any(marker in str(a) for a in started)
    args = cmdline(pid)
    return args is not None and any(marker in a for a in args)


def wait_gone(pids: Sequence[int], timeout: float) -> list[int]:
    """Wait up to `timeout` for the processes to exit; returns those still alive."""
    deadline = time.monotonic() + timeout
    left = [p for p in pids if alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [p for p in left if alive(p)]
    return left


def terminate(targets: Sequence[tuple[int, str]], timeout: float, sig: int = signal.SIGTERM) -> list[int]:
    """Send `sig` to every (pid, marker) still ours, wait up to `timeout`, then SIGKILL the ones
    left (checked again first). Returns the PIDs that were signalled."""
    sent: list[int] = []
    for pid, marker in targets:
        if is_ours(pid, marker):
            try:
                os.kill(pid, sig)
                sent.append(pid)
            except ProcessLookupError:
                pass
    markers = dict(targets)
    stubborn = wait_gone(sent, timeout)
    for pid in stubborn:
        if is_ours(pid, markers[pid]):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    wait_gone(stubborn, 10.0)
    return sent


# -- PostgreSQL left running by an agent ---------------------------------------------------------


def postmaster_pid(data_dir: Path) -> int | None:
    try:
        first = (data_dir / "postmaster.pid").read_text().splitlines()[0]
        return int(first.strip())
    except (OSError, IndexError, ValueError):
        return None


def is_postmaster_of(pid: int, data_dir: Path) -> bool:
    """The postmaster runs with its data directory as working directory; that (or the data
    directory on its command line) tells it apart from a process that reused the PID."""
    if not alive(pid):
        return False
    want = os.path.realpath(data_dir)
    try:
        if os.path.realpath(os.readlink(f"/proc/{pid}/cwd")) == want:
            return True
    except OSError:
        pass
    args = cmdline(pid) or []
    return any(os.path.realpath(a) == want for a in args if a.startswith("/"))


def _pg_ctl_stop(pg_ctl: Path, data_dir: Path, os_user: str | None, timeout: float) -> None:
    from pgwarden.postgres.osuser import run_as

    run_as(os_user, [str(pg_ctl), "stop", "-D", str(data_dir), "-m", "fast", "-w", "-t", str(int(timeout))],
           timeout=timeout + 5)


def stop_postmaster(data_dir: Path, pg_ctl: Path | None, os_user: str | None, timeout: float = 30.0) -> bool:
    """Stop the PostgreSQL server of `data_dir` if one still runs: `pg_ctl stop -m fast` as the
    OS user, then SIGINT (fast shutdown), then SIGKILL. True if one was running."""
    pid = postmaster_pid(data_dir)
    if pid is None or not is_postmaster_of(pid, data_dir):
        return False
    if pg_ctl is not None:
        try:
            _pg_ctl_stop(pg_ctl, data_dir, os_user, timeout)
        except Exception:  # whatever went wrong, the signals below do the job
            pass  # the signals below do the job
    if not wait_gone([pid], 1.0):
        return True
    for sig, wait in ((signal.SIGINT, 10.0), (signal.SIGKILL, 5.0)):
        if not is_postmaster_of(pid, data_dir):
            break
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            break
        if not wait_gone([pid], wait):
            break
    return True
