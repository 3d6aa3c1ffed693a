"""Carries out the core's logical-replication changes on a thread of their own, one at a time:
creating a subscription waits on another cluster (its slot needs a consistent snapshot there),
which must never hold up the HA loop's lease renewals (rule 15). The loop submits the same
change each time until the next observation shows it done; a busy worker ignores submissions."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from pgwarden.core.logical import LogicalChange, LogicalObjects
from pgwarden.postgres.controller import PostgresError

log = logging.getLogger("pgwarden.agent")

CHANGE_TIMEOUT = 60.0  # one statement's deadline; the initial copy itself runs in the background
# With nothing logical declared or seen, a primary still looks for slots made outside pgwarden
# (for its standbys to copy, core/slot_copies.py) this often, seconds.
LOGICAL_RECHECK = 30.0


def logical_read_due(*, primary: bool, seen: bool, leader_has_slots: bool, declared: bool,
                     since_last_read: float) -> bool:
    """Read the server's publications, subscriptions and slots this loop? Every loop while there
    is something to manage: our marked objects or slots seen here (`seen`), slots on the leader
    for a standby to copy, declarations for a primary to reconcile. Otherwise a primary looks
    only every LOGICAL_RECHECK seconds, for slots made outside pgwarden, and a standby not at
    all: an idle primary with no logical replication need not open a second connection every
    loop (issue 16, idle cost)."""
    if seen or leader_has_slots:
        return True
    if not primary:
        return False
    return declared or since_last_read >= LOGICAL_RECHECK


class LogicalWorker:
    def __init__(self, apply: Callable[[LogicalChange, float], None]) -> None:
        self._apply = apply
        self._lock = threading.Lock()
        self._busy: str | None = None
        self.last_error: str | None = None  # shown in /status until a change succeeds

    def submit(self, change: LogicalChange) -> bool:
        """Start `change` unless one is in flight. True if started."""
        name = getattr(change, "name", None) or change.spec.name  # type: ignore[union-attr]
        return self.run_later(f"{type(change).__name__} {name}", lambda t: self._apply(change, t))

    def run_later(self, what: str, work: Callable[[float], None], quiet: bool = False) -> bool:
        """Run `work(timeout)` on the worker's thread unless something is in flight; `quiet`:
        log it only when it fails (work repeated every loop)."""
        with self._lock:
            if self._busy is not None:
                return False
            self._busy = what
        threading.Thread(target=self._run, args=(what, work, quiet), name="pgwarden-logical",
                         daemon=True).start()
        return True

    def _run(self, what: str, work: Callable[[float], None], quiet: bool) -> None:
        try:
            log.log(logging.DEBUG if quiet else logging.INFO, "logical replication: %s", what)
            work(CHANGE_TIMEOUT)
            self.last_error = None
        except (PostgresError, OSError) as e:
            self.last_error = f"{what}: {e}"
            log.warning("logical replication: %s failed: %s", what, e)
        except Exception as e:  # a bug must not kill the agent; report it
            self.last_error = f"{what}: {e}"
            log.exception("logical replication: %s failed", what)
        finally:
            with self._lock:
                self._busy = None


class BoundedReader:
    """Reads the server's publications, subscriptions and slots in a worker thread, given up
    after `timeout` (libpq's connect timeout cannot go below 2 s, and the loop's calls must stay
    within the lease margin, rule 15); at most one read in flight, so a stalled server does not
    pile up threads."""

    def __init__(self, read: Callable[[float], LogicalObjects]) -> None:
        self._read = read
        self._thread: threading.Thread | None = None

    def read(self, timeout: float) -> LogicalObjects | None:
        """None: no answer in time, or the previous read still waits for one."""
        if self._thread is not None and self._thread.is_alive():
            return None
        box: dict[str, LogicalObjects] = {}

        def work() -> None:
            try:
                box["objs"] = self._read(max(timeout, 0.5))
            except Exception as e:  # reported as "not read this loop"
                log.warning("cannot read publications and subscriptions: %s", e)

        self._thread = threading.Thread(target=work, name="pgwarden-logical-read", daemon=True)
        self._thread.start()
        self._thread.join(timeout)
        return box.get("objs")
