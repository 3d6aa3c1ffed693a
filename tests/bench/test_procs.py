"""bench/procs.py: the footprint counts an agent's helper processes (the fencer) with it."""

from __future__ import annotations

import os
import subprocess
import sys

from bench.procs import helper_pids


def test_helper_pids_are_the_children_naming_the_marker() -> None:
    sleep = "import time; time.sleep(30)"
    marked = subprocess.Popen([sys.executable, "-c", sleep, "pgwarden-helper-test"])
    other = subprocess.Popen([sys.executable, "-c", sleep, "something-else"])
    try:
        found = helper_pids(os.getpid(), marker="pgwarden-helper-test")
        assert found == [marked.pid]
        assert other.pid not in helper_pids(os.getpid(), marker="pgwarden-helper-test")
        assert helper_pids(marked.pid, marker="pgwarden-helper-test") == []  # it has no children
    finally:
        for p in (marked, other):
            p.kill()
            p.wait(10)
