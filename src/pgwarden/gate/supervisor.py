"""The agent's side of the logical gate: start the gate's own process (gate/process.py), or keep
the one an earlier run of this agent started from the same node file; start it again if it dies;
stop it when the agent stops.

The process runs in a session of its own, so a crashed agent leaves it serving: the subscriptions
through it go on, and the next agent keeps it (its pid file, its command line). A gate from
another node file (the port or the certificates may differ) is stopped and replaced.
"""

from __future__ import annotations

import hashlib
import logging
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from pgwarden.procinfo import cmdline

log = logging.getLogger("pgwarden.gate")

MODULE = "pgwarden.gate.process"
RESPAWN_EVERY = 5.0  # seconds between attempts to start a gate that keeps failing


class GateProcess:
    def __init__(self, node_file: str, run_dir: Path, listen: tuple[str, int]) -> None:
        self.node_file = os.path.abspath(node_file)
        self.digest = hashlib.sha256(Path(node_file).read_bytes()).hexdigest()[:16]
        self.run_dir = run_dir
        self.pid_file = run_dir / "gate.pid"
        self.log_file = run_dir / "gate.log"  # the process's standard error
        self.listen = listen
        self._head = _head(self.node_file)
        self._tail = self._head + self.digest.encode() + b"\0"
        self._proc: subprocess.Popen[bytes] | None = None  # when we spawned it
        self._pid = 0
        self._tried = 0.0  # monotonic time of the last start

    @property
    def pid(self) -> int:
        return self._pid

    def start(self, timeout: float = 10.0) -> None:
        """Listening when this returns, ours or kept from an earlier agent run; OSError (the port
        in use, say) says why not."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            pid = int(self.pid_file.read_text())
        except (OSError, ValueError):
            pid = 0
        argv = cmdline(pid) if pid > 0 else b""
        if argv.endswith(self._tail):
            self._pid = pid
            log.info("keeping the logical gate pid %d on %s:%d", pid, *self.listen)
            return
        if self._head in argv:
            log.info("stopping the logical gate pid %d: started from an earlier node file", pid)
            _terminate(pid, None)
        self._spawn(timeout)
        log.info("started the logical gate pid %d on %s:%d", self._pid, *self.listen)

    def ensure_running(self, now: float | None = None) -> bool:
        """Start the gate again if it died (at most every RESPAWN_EVERY seconds); True if a new
        one started. Cheap enough for every agent loop: a reap of our child, or one read of
        /proc/<pid>/cmdline for a gate an earlier agent run started."""
        if self._proc is not None:
            if self._proc.poll() is None:
                return False
            self._proc = None
        elif self._pid > 0 and cmdline(self._pid).endswith(self._tail):
            return False
        now = time.monotonic() if now is None else now
        if now - self._tried < RESPAWN_EVERY:
            return False
        log.warning("the logical gate pid %d is gone; starting a new one", self._pid)
        try:
            self._spawn(5.0)
        except OSError as e:
            log.error("cannot start the logical gate: %s", e)
            return False
        return True

    def stop(self, timeout: float = 5.0) -> None:
        if self._pid > 0 and (self._proc is not None or cmdline(self._pid).endswith(self._tail)):
            _terminate(self._pid, self._proc, timeout)
        self._proc, self._pid = None, 0
        self.pid_file.unlink(missing_ok=True)

    def _spawn(self, timeout: float) -> None:
        self._tried = time.monotonic()
        offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        with open(self.log_file, "ab") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", MODULE, self.node_file, self.digest],
                start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=err, close_fds=True)
        assert proc.stdout is not None
        try:
            readable, _, _ = select.select([proc.stdout], [], [], timeout)
            line = proc.stdout.readline() if readable else b""
        finally:
            proc.stdout.close()
        if line.strip() != b"listening":
            _terminate(proc.pid, proc, 2.0)
            why = _last_line(self.log_file, offset) or f"it did not start listening within {timeout:g} s"
            raise OSError(f"the logical gate did not start: {why} (its log: {self.log_file})")
        self._proc, self._pid = proc, proc.pid
        self.pid_file.write_text(str(proc.pid))


def stop_left_behind(node_file: str, run_dir: Path) -> int | None:
    """Stop the gate a killed agent left serving (`local stop`/`down` after a crash); its pid,
    None if there was none."""
    try:
        pid = int((run_dir / "gate.pid").read_text())
    except (OSError, ValueError):
        return None
    if pid <= 0 or _head(node_file) not in cmdline(pid):
        return None
    _terminate(pid, None)
    (run_dir / "gate.pid").unlink(missing_ok=True)
    return pid


def _head(node_file: str) -> bytes:
    """The part of the gate's command line that names its node (the digest follows)."""
    return b"\0-m\0" + MODULE.encode() + b"\0" + os.fsencode(os.path.abspath(node_file)) + b"\0"


def _terminate(pid: int, proc: subprocess.Popen[bytes] | None, timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after `timeout`; reaps it when it is our child."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                return
            if proc is None and not cmdline(pid):
                return
            time.sleep(0.02)
    if proc is not None:
        proc.wait(5)


def _last_line(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            lines = [ln.strip() for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""
