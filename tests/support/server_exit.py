"""What the tests' own servers (etcd, ZooKeeper) say when they died under a test."""

from __future__ import annotations

import subprocess
from pathlib import Path


def raise_if_exited(proc: subprocess.Popen[bytes] | None, log_path: Path, what: str) -> None:
    """Raise, with the exit status and the log's tail, if `proc` exited although nobody stopped
    it (a session server shared by many tests): the tests' own errors would only say that
    nothing answers."""
    if proc is not None and proc.poll() is not None:
        tail = log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{what} (pid {proc.pid}) exited with {proc.returncode} while tests "
                           f"used it:\n{tail}")
