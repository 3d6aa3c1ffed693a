"""The agent's PgBouncer router: while this node leads, keep PgBouncer's databases pointed at its
PostgreSQL; before it hands over in a switchover, PAUSE them so no transaction is cut off.

Why this lives in the agent and not in a separate watcher: the PAUSE must finish *before* the
old primary stops taking writes, and only the leader knows that moment. A watcher seeing the
switchover request in the store at the same time as the leader would race it. So:

* planned switchover: the leader PAUSEs (waits, bounded, for in-flight transactions), then
  demotes and releases the lease; the member that takes the lease and promotes rewrites the
  target, RELOADs and RESUMEs. Clients wait in PgBouncer's queue meanwhile and see no error.
* unplanned failover: the new leader finds PgBouncer still pointed elsewhere and not paused; it
  retargets, RELOADs and KILLs the database (server connections to the old primary are dropped at
  once, so a partitioned old primary cannot take writes through PgBouncer), then RESUMEs.

Only the lease holder with a running primary ever points PgBouncer anywhere (pointing it at a
member that does not hold the lease could create a second writer for PgBouncer's clients).
The console work runs on its own thread so a slow PgBouncer never delays the HA loop; only
`hand_over` blocks the loop, for at most the budget the caller gives it (inside the lease).

An owner line in pgbouncer.ini (`pgwarden.routing.pgbouncer.ini_owner`) naming another cluster
makes the router leave PgBouncer alone: during an online upgrade the old and the new cluster's
agents are both configured, and only the owner may act.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from pgwarden.config.schema import PgBouncerConfig
from pgwarden.routing.pgbouncer import AdminConsole, AdminError, ini_lock, may_drive, rewrite_targets

log = logging.getLogger("pgwarden.router")

CHECK_INTERVAL = 1.0  # re-check PgBouncer this often while leading (it may have restarted)
OP_TIMEOUT = 2.0


@dataclass(frozen=True)
class RouterView:
    """What the router knows, for GET /status and the dashboard (no credentials)."""

    address: str  # PgBouncer's host:port
    databases: tuple[str, ...]
    target: tuple[str, int] | None  # where this agent keeps PgBouncer pointed: only while it leads
    confirmed_at: float | None  # wall time PgBouncer was last found pointed at `target`
    error: str  # the last failure talking to PgBouncer, "" once it worked again


class PgBouncerRouter:
    def __init__(self, cfg: PgBouncerConfig, cluster: str = "") -> None:
        self.cfg = cfg
        self.cluster = cluster
        self.console = AdminConsole(cfg.host, cfg.port, cfg.admin.username, cfg.admin.secret())
        self._target: tuple[str, int] | None = None
        self._state = threading.Lock()  # guards _target
        self._ops = threading.Lock()  # one user of the console at a time
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pgbouncer-router", daemon=True)
        self._last_error = ""
        self.synced_at: float | None = None
        self._confirmed: tuple[tuple[str, int], float] | None = None  # (target, wall time)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(OP_TIMEOUT + 1)
        self.console.close()

    def follow(self, target: tuple[str, int] | None) -> None:
        """Called each HA loop: our PostgreSQL's address while we lead with a running primary,
        else None (then the router leaves PgBouncer alone)."""
        with self._state:
            changed = target != self._target
            self._target = target
        if changed:
            self._wake.set()

    def view(self) -> RouterView:
        with self._state:
            target = self._target
        confirmed = self._confirmed
        return RouterView(
            address=f"{self.cfg.host}:{self.cfg.port}", databases=tuple(self.cfg.databases), target=target,
            confirmed_at=confirmed[1] if confirmed is not None and confirmed[0] == target else None,
            error=self._last_error,
        )

    @property
    def pause_timeout(self) -> float:
        return self.cfg.pause_timeout

    def hand_over(self, budget: float) -> bool:
        """PAUSE the databases before a switchover demotes us; True when PgBouncer confirmed that
        no transaction is running on the old primary. Never blocks longer than `budget`."""
        deadline = time.monotonic() + budget
        with self._state:
            self._target = None  # the router thread must not RESUME behind our back
        if not self._ops.acquire(timeout=max(0.0, budget)):
            log.warning("PgBouncer router busy; switching over without PAUSE")
            return False
        try:
            with ini_lock(self.cfg.config_file, shared=True, wait=False) as got:
                if not got or not self._mine():
                    log.info("PgBouncer is not this cluster's to pause (owner line in %s)",
                             self.cfg.config_file)
                    return False
                return self._pause(deadline)
        except (AdminError, OSError) as e:
            # Going on is what a switchover without PgBouncer does: transactions still open are
            # cut off by the demotion. Waiting longer would eat into the lease.
            log.warning("PgBouncer PAUSE did not complete (%s); switching over anyway", e)
            return False
        finally:
            self._ops.release()

    def _mine(self) -> bool:
        return may_drive(self.cfg.config_file.read_text(), self.cluster)

    def _pause(self, deadline: float) -> bool:
        started = time.monotonic()
        for db in self.cfg.databases:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AdminError("no time left")
            self.console.command(f"PAUSE {db}", left)
        log.info("PgBouncer paused %s for the switchover in %.0f ms", ", ".join(self.cfg.databases),
                 (time.monotonic() - started) * 1000)
        return True

    # -- the thread ------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(CHECK_INTERVAL)
            self._wake.clear()
            with self._state:
                target = self._target
            if target is None or self._stop.is_set():
                continue
            with self._ops:
                with self._state:
                    if self._target != target:  # a hand-over started meanwhile
                        continue
                try:
                    with ini_lock(self.cfg.config_file, shared=True, wait=False) as got:
                        if not got or not self._mine():
                            continue  # another cluster's (an upgrade), or being handed over now
                        self.sync(target)
                    self.synced_at = time.monotonic()
                    self._confirmed = (target, time.time())
                    self._last_error = ""
                except (AdminError, OSError, ValueError) as e:
                    if str(e) != self._last_error:
                        log.warning("PgBouncer router: %s", e)
                        self._last_error = str(e)

    def sync(self, target: tuple[str, int]) -> None:
        """One step toward "every database points at `target` and none is paused"."""
        rows = self.console.databases(OP_TIMEOUT)
        missing = [d for d in self.cfg.databases if d not in rows]
        if missing:
            raise AdminError(f"PgBouncer has no database {', '.join(missing)}")
        mine = [rows[d] for d in self.cfg.databases]
        moved = [r for r in mine if (r.host, r.port) != target]
        if moved:
            host, port = target
            rewrite_targets(self.cfg.config_file, self.cfg.databases, host, port)
            self.console.command("RELOAD", OP_TIMEOUT)
            log.info("PgBouncer now sends %s to %s:%d", ", ".join(r.name for r in moved), host, port)
        for r in mine:
            if r in moved and (not r.paused or self.console.server_count(r.name, OP_TIMEOUT) > 0):
                # Not a completed switchover PAUSE: an unplanned failover. Drop every connection
                # to the old primary at once rather than let it take (or hang) more writes.
                self.console.command(f"KILL {r.name}", OP_TIMEOUT)
                log.warning("PgBouncer: killed connections of %s to the former primary", r.name)
            if r in moved or r.paused:
                self._resume(r.name)

    def _resume(self, db: str) -> None:
        try:
            self.console.command(f"RESUME {db}", OP_TIMEOUT)
        except AdminError as e:
            if "not paused" not in str(e):
                raise
        log.info("PgBouncer resumed %s", db)


def router_for(cfg: PgBouncerConfig | None, cluster: str = "") -> PgBouncerRouter | None:
    return PgBouncerRouter(cfg, cluster) if cfg is not None else None
