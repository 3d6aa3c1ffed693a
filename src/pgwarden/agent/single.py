"""One agent per node: an exclusive lock on `agent.lock` in the node's run directory, held for the
agent's lifetime. The kernel drops it when the process ends, however it ends (SIGKILL included),
so an agent started again after a crash never trips over a stale pid file; a second agent started
while the first still runs is refused. Two agents of one node would both take the leader key
back from "their previous run" (SAFETY rule 5) and fight over one PostgreSQL."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

from pgwarden.config.schema import NodeConfig

LOCK_FILE = "agent.lock"


def run_dir_for(cfg: NodeConfig) -> Path:
    """Agent-owned files (fencer state, pid files, the lock) live beside the data directory."""
    return Path(str(cfg.data_dir) + ".pgwarden")


class AlreadyRunning(Exception):
    """Another agent holds this node's run directory."""


def hold_run_dir(run_dir: Path) -> IO[str]:
    """Lock `run_dir` for this process and record our pid in the lock file; keep the returned file
    open for as long as the agent runs. Raises AlreadyRunning, naming the holder, if locked."""
    run_dir.mkdir(parents=True, exist_ok=True)
    # Kept open by the caller; not inherited by the children we exec (PEP 446).
    f = open(run_dir / LOCK_FILE, "a+")  # noqa: SIM115
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "unknown"
        f.close()
        raise AlreadyRunning(
            f"another pgwarden agent (pid {holder}) is already running for this node ({run_dir}): "
            "stop it first, or give this node a data_dir of its own"
        ) from None
    except BaseException:
        f.close()
        raise
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f
