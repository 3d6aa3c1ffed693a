"""Process handling of `pgwarden local`: a recorded PID is only signalled while it still runs the
command we started (PID reuse), stubborn processes are killed, stray postmasters are found."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from pgwarden.local import procs

SLEEP = "import signal, sys, time; {handler}time.sleep(600)"


def start_sleeper(tmp_path: Path, marker: str, ignore_term: bool = False) -> int:
    handler = "signal.signal(signal.SIGTERM, signal.SIG_IGN); " if ignore_term else ""
    return procs.spawn([sys.executable, "-c", SLEEP.format(handler=handler), marker],
                       tmp_path / "sleeper.log", tmp_path)


def test_is_ours_checks_the_command_line(tmp_path: Path) -> None:
    marker = str(tmp_path / "marker-a")
    pid = start_sleeper(tmp_path, marker)
    try:
        assert procs.wait_gone([pid], 0.2) == [pid]
        assert procs.is_ours(pid, marker)
        assert not procs.is_ours(pid, str(tmp_path / "marker-b"))  # same PID, another command
        assert not procs.is_ours(None, marker)
        # A PID that now runs something else is never signalled.
        assert procs.terminate([(pid, str(tmp_path / "marker-b"))], 1.0) == []
        assert procs.alive(pid)
        assert procs.terminate([(pid, marker)], 5.0) == [pid]
        assert not procs.alive(pid) and not procs.is_ours(pid, marker)
    finally:
        procs.terminate([(pid, marker)], 0.1, signal.SIGKILL)


def test_a_child_not_yet_exec_ed_counts_as_ours(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Between fork and exec a child shows its parent's command line (or none); `local up`
    checking it right then must not report it as exited (it did, under load, with an empty log)."""
    marker = str(tmp_path / "marker-c")
    pid = start_sleeper(tmp_path, marker)
    try:
        own = procs.cmdline(os.getpid())
        real = procs.cmdline
        monkeypatch.setattr(procs, "cmdline", lambda p: own if p == pid else real(p))
        assert procs.is_ours(pid, marker)
        monkeypatch.setattr(procs, "cmdline", lambda p: [] if p == pid else real(p))
        assert procs.is_ours(pid, marker)  # mid-exec: /proc shows no command line at all
        assert not procs.is_ours(pid, str(tmp_path / "marker-d"))
        monkeypatch.setattr(procs, "cmdline", real)
        assert procs.is_ours(pid, marker)
    finally:
        procs.terminate([(pid, marker)], 0.1, signal.SIGKILL)
    assert not procs.is_ours(pid, marker)


def test_terminate_falls_back_to_sigkill(tmp_path: Path) -> None:
    marker = str(tmp_path / "stubborn")
    pid = start_sleeper(tmp_path, marker, ignore_term=True)
    # Wait until the handler is installed: the log stays empty, so look at the signal mask.
    def ignores_term() -> bool:
        status = Path(f"/proc/{pid}/status").read_text()
        ign = next(line for line in status.splitlines() if line.startswith("SigIgn:"))
        return bool(int(ign.split()[1], 16) & (1 << (signal.SIGTERM - 1)))

    from tests.support.wait import wait_for

    wait_for(ignores_term, 10, "the sleeper to ignore SIGTERM")
    assert procs.terminate([(pid, marker)], 0.5) == [pid]
    assert not procs.alive(pid)


def test_postmaster_detection(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    assert procs.postmaster_pid(data) is None
    assert procs.stop_postmaster(data, None, None) is False
    (data / "postmaster.pid").write_text("garbage\n")
    assert procs.postmaster_pid(data) is None
    # A live process that is not this data directory's postmaster is left alone.
    marker = str(tmp_path / "not-a-postmaster")
    pid = start_sleeper(tmp_path, marker)
    try:
        (data / "postmaster.pid").write_text(f"{pid}\n{data}\n")
        assert procs.postmaster_pid(data) == pid
        assert not procs.is_postmaster_of(pid, data)
        assert procs.stop_postmaster(data, None, None) is False
        assert procs.alive(pid)
    finally:
        procs.terminate([(pid, marker)], 5.0)


def test_stray_postmaster_is_stopped(tmp_path: Path) -> None:
    """Something running in the data directory (as a postmaster does) and named in postmaster.pid
    is stopped: pg_ctl is unavailable here, so by SIGINT."""
    data = tmp_path / "data"
    data.mkdir()
    pid = procs.spawn([sys.executable, "-c", SLEEP.format(handler=""), str(data)], tmp_path / "pm.log", data)
    try:
        (data / "postmaster.pid").write_text(f"{pid}\n")
        assert procs.is_postmaster_of(pid, data)
        assert procs.stop_postmaster(data, None, None, timeout=5) is True
        assert not procs.alive(pid)
    finally:
        procs.terminate([(pid, str(data))], 0.1, signal.SIGKILL)
