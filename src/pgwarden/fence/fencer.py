"""The fencer: a tiny separate process that stops a primary whose lease deadline passed, even when
the agent is dead, frozen or stuck (SAFETY rule 13).

It runs in its own session (so signals to the agent's process group miss it), reads only the state
file the agent writes (`state.py`), and while armed with the deadline passed it stops whatever
postmaster is recorded (matching pid and start time) and every backend with SIGKILL: nothing that
was writable can acknowledge another commit. A pid recorded after the deadline passed (the agent
arms before PostgreSQL starts, then records its pid) is fenced as well. An unreadable state file
leaves the last one read in force. It exits once its agent is gone and nothing is left to fence;
nothing else ends it: an unexpected error is logged to `fencer.log` and the loop goes on.
Standard library only, to stay small and start fast: `python -m pgwarden.fence.fencer STATE_FILE`.

It does not poll fast while there is nothing to do (issue 16): disarmed, or armed with the
deadline ahead, it sleeps until the deadline but never longer than the state's `idle_bound`
(DEFAULT_BOUND without one, at most MAX_BOUND), and the agent's wake-up (`wake.py`) ends the
sleep at once when it arms it, moves the deadline earlier or records another postmaster. Only
armed past the deadline does it poll every POLL seconds. Why a lost wake-up costs at most that
bound, and why that is early enough: docs/architecture.md, "The lease and the fencer".
"""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path

from pgwarden.fence.state import FenceState, alive, postmaster_of, process_start_time, read_state
from pgwarden.fence.wake import DEFAULT_BOUND, MAX_BOUND, WakeReader, wake_path

POLL = 0.05  # armed past the deadline: how often to look for a postmaster to fence
ERROR_REPEAT = 60.0  # the same error is logged again at most this often

Target = tuple[int, int | None]  # (postmaster pid, its start time)


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


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass  # already gone: that is what we wanted


def _append(log: Path, line: str) -> None:
    try:
        with log.open("a") as f:
            f.write(f"{time.time():.3f} {line}\n")
    except OSError:
        pass  # a full disk must not stop the fencing


def fence(st: FenceState, log: Path) -> bool:
    """Stop the recorded postmaster and its children. True if something was stopped."""
    pid = st.postmaster_pid
    if pid is None or not same_process(pid, st.postmaster_start):
        return False
    # Freeze the postmaster first so it cannot start children, then kill the backends (they are
    # what acknowledges commits), then the postmaster. The backends are looked up before the
    # freeze too, so that they are killed even if the postmaster vanishes in between.
    backends = children_of(pid)
    _kill(pid, signal.SIGSTOP)
    backends += [c for c in children_of(pid) if c not in backends]
    for child in backends:
        _kill(child, signal.SIGKILL)
    _kill(pid, signal.SIGKILL)
    _append(log, f"fenced postmaster {pid}: lease deadline passed")
    return True


class Watch:
    """What the fencer remembers between polls."""

    def __init__(self, state_file: Path) -> None:
        self.state_file = state_file
        self.log = state_file.with_name("fencer.log")
        self.last: FenceState | None = None
        # Postmasters already killed. A SIGKILL cannot be ignored, so one is enough; and a pid
        # recorded without a start time is not signalled twice (the second time it is a reuse).
        self.fenced: set[Target] = set()

    def target(self, st: FenceState) -> Target | None:
        """The recorded postmaster if it runs and has not been fenced yet; else the one the data
        directory's postmaster.pid names (started by an agent that froze before recording it),
        unless it runs in standby mode."""
        pid = st.postmaster_pid
        if pid is not None:
            key = (pid, st.postmaster_start)
            if key not in self.fenced and same_process(pid, st.postmaster_start):
                return key
        found = postmaster_of(st.data_dir) if st.data_dir else None
        # A server started in standby mode takes no writes until promoted, and promotion removes
        # standby.signal: such a postmaster (a replica `pgwarden node rejoin` started while the
        # armed state of a dead primary's agent was still on disk, say) is left alone.
        if found is not None and st.data_dir and (Path(st.data_dir) / "standby.signal").exists():
            found = None
        if found is not None:
            key = (found, process_start_time(found))
            if key not in self.fenced:
                return key
        return None

    def tick(self, now: float) -> bool:
        """One poll: fence if due. False once the agent is gone and nothing is left to fence."""
        st = read_state(self.state_file) or self.last
        if st is None:
            return False  # never had a state: there is nothing we could fence
        if self.last is None:
            _append(self.log, f"fencer {os.getpid()} watching {self.state_file} for agent {st.agent_pid}")
        self.last = st
        target = self.target(st) if st.armed else None
        # No "deadline handled" memory: while armed and past the deadline, every recorded live
        # postmaster is fenced, including one recorded after the deadline passed.
        if target is not None and now >= st.deadline and \
                fence(replace(st, postmaster_pid=target[0], postmaster_start=target[1]), self.log):
            self.fenced.add(target)
            target = None
        return target is not None or alive(st.agent_pid)

    def wait(self, now: float) -> float:
        """How long to sleep before the next tick, unless woken."""
        st = self.last
        if st is None:
            return POLL
        bound = DEFAULT_BOUND if st.idle_bound is None else min(MAX_BOUND, max(POLL, st.idle_bound))
        if not st.armed:
            return bound
        if now >= st.deadline:
            return POLL  # a postmaster may still be recorded or started: keep looking
        # A renewal only moves the deadline later: waking at this one and reading again is
        # never late. The bound covers a change whose wake-up was lost (an earlier deadline).
        return min(bound, st.deadline - now)


class ErrorLog:
    """Log unexpected errors to fencer.log, each distinct one at most every ERROR_REPEAT s."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.seen: dict[str, float] = {}

    def report(self, e: Exception) -> None:
        key = f"{type(e).__name__}: {e}"
        now = time.monotonic()
        if now - self.seen.get(key, -ERROR_REPEAT) < ERROR_REPEAT:
            return
        if len(self.seen) > 100:  # messages may carry pids: keep the memory bounded
            self.seen.clear()
        self.seen[key] = now
        tb = "".join(traceback.format_exception(e)).rstrip().replace("\n", "\n    ")
        _append(self.log, f"unexpected error (fencer goes on): {key}\n    {tb}")


def run(state_file: Path) -> int:
    watch = Watch(state_file)
    errors = ErrorLog(watch.log)
    # Opened before the first read of the state: every wake-up sent from then on is seen.
    wake = WakeReader(wake_path(state_file), POLL, errors.report)
    try:
        while True:
            wake.drain()  # before the read: a wake-up sent after it ends the next wait at once
            try:
                if not watch.tick(time.monotonic()):
                    return 0
                delay = watch.wait(time.monotonic())
            except Exception as e:  # never let a bug or a /proc hiccup end the fencing
                errors.report(e)
                delay = POLL
            wake.wait(delay)
    finally:
        wake.close()


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: python -m pgwarden.fence.fencer STATE_FILE", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # only the deadline or the agent's exit ends us
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return run(Path(sys.argv[1]))


if __name__ == "__main__":
    raise SystemExit(main())
