"""The fencer: a tiny separate process that stops a primary whose lease deadline passed, even when
the agent is dead, frozen or stuck (SAFETY rule 13).

It runs in its own session (so signals to the agent's process group miss it), reads only the state
file the agent writes (`state.py`), and when the deadline passes while armed it stops the
postmaster and every backend with SIGKILL: nothing that was writable can acknowledge another
commit. It exits once its agent is gone and nothing is left to fence. Standard library only, to
stay small and start fast: `python -m pgwarden.fence.fencer STATE_FILE`.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from pgwarden.fence.state import FenceState, alive, process_start_time, read_state

POLL = 0.05


def children_of(pid: int) -> list[int]:
    out: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("PPid:"):
                if int(line.split()[1]) == pid:
                    out.append(int(entry))
                break
    return out


def same_process(pid: int, start: int | None) -> bool:
    return alive(pid) and (start is None or process_start_time(pid) == start)


def fence(st: FenceState, log: Path) -> bool:
    """Stop the recorded postmaster and its children. True if something was stopped."""
    pid = st.postmaster_pid
    if pid is None or not same_process(pid, st.postmaster_start):
        return False
    # Freeze the postmaster first so it cannot restart children, then kill the backends (they
    # are what acknowledges commits), then the postmaster.
    try:
        os.kill(pid, signal.SIGSTOP)
    except ProcessLookupError:
        return False
    for child in children_of(pid):
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass
    os.kill(pid, signal.SIGKILL)
    with log.open("a") as f:
        f.write(f"{time.time():.3f} fenced postmaster {pid}: lease deadline passed\n")
    return True


def run(state_file: Path) -> int:
    log = state_file.with_name("fencer.log")
    fenced_deadline: float | None = None
    while True:
        st = read_state(state_file)
        now = time.monotonic()
        if st is not None and st.armed and now >= st.deadline and fenced_deadline != st.deadline:
            fence(st, log)
            fenced_deadline = st.deadline
        agent_alive = st is not None and alive(st.agent_pid)
        if not agent_alive:
            pending = st is not None and st.armed and fenced_deadline != st.deadline \
                and st.postmaster_pid is not None and same_process(st.postmaster_pid, st.postmaster_start)
            if not pending:
                return 0
        time.sleep(POLL)


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: python -m pgwarden.fence.fencer STATE_FILE", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # only the deadline or the agent's exit ends us
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return run(Path(sys.argv[1]))


if __name__ == "__main__":
    raise SystemExit(main())
