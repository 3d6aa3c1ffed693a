"""The CPU an idle fencer costs (issue 16 part 2), without a cluster: this script stands in for the
agent, starting the fencer through `fence.supervisor.Fencer` as the agent does, and either keeps
it disarmed (a replica) or armed with the deadline renewed every `--loop-wait` seconds as a
leader's lease is (ttl 4, deadline = now + ttl - 0.5). A `sleep` process stands in for the
postmaster. The fencer's utime+stime over `--seconds` is read from /proc/PID/stat.

    PYTHONPATH=src:. python bench/fencer_idle.py --mode armed --seconds 60

PYTHONPATH picks the code measured: point it at another checkout's src/ for a before/after.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pgwarden.fence.supervisor import Fencer

TTL = 4.0  # the default timing (ttl 4, retry_timeout 1)
RETRY_TIMEOUT = 1.0
MARGIN = 0.5


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid`, in seconds."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rfind(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(mode: str, seconds: float, loop_wait: float) -> float:
    pm = subprocess.Popen(["sleep", str(int(seconds) + 60)])
    fencer_pid = 0
    try:
        with tempfile.TemporaryDirectory() as d:
            f = Fencer(Path(d) / "run")
            if hasattr(f, "set_timing"):  # the agent's first loop does this (absent before issue 16)
                f.set_timing(TTL, RETRY_TIMEOUT)
            f.start()
            fencer_pid = int(f.pid_file.read_text())
            if mode == "armed":
                f.arm(time.monotonic() + TTL - MARGIN, pm.pid)
            time.sleep(1.0)  # let it import and settle before the window starts
            before = cpu_seconds(fencer_pid)
            end = time.monotonic() + seconds
            while (now := time.monotonic()) < end:
                if mode == "armed":
                    f.arm(now + TTL - MARGIN, pm.pid)  # the leader's renewal, once a loop
                time.sleep(min(loop_wait, max(0.0, end - now)))
            used = cpu_seconds(fencer_pid) - before
            assert pm.poll() is None, "the fencer stopped the stand-in postmaster of a renewed lease"
            f.disarm()
            return used * 60.0 / seconds
    finally:
        if fencer_pid:  # our own child: its pid cannot have been reused before this wait
            os.kill(fencer_pid, signal.SIGKILL)
            os.waitpid(fencer_pid, 0)
        pm.kill()
        pm.wait(5)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=("armed", "disarmed"), required=True)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--loop-wait", type=float, default=1.0)
    a = ap.parse_args()
    load = Path("/proc/loadavg").read_text().split()[:3]
    rate = measure(a.mode, a.seconds, a.loop_wait)
    load_after = Path("/proc/loadavg").read_text().split()[:3]
    print(f"{a.mode}: {rate:.4f} CPU-s/min over {a.seconds:g} s "
          f"(load average {' '.join(load)} -> {' '.join(load_after)}; python {sys.version.split()[0]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
