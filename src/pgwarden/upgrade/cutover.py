"""The cutover, either way: PAUSE PgBouncer, wait until the other side has applied everything,
copy the sequences, swap the replication's direction, point PgBouncer at the other side's
primary, RESUME, and hand PgBouncer to that side's agents.

Ordering rules (why each step is where it is):
- PgBouncer's owner line names neither cluster (UPGRADE_OWNER) before the PAUSE and until the
  RESUME, so neither cluster's leader undoes the PAUSE or retargets PgBouncer meanwhile
  (routing/pgbouncer.py: the owner line is changed under a lock the routers also take).
- Everything that may fail without harm (the wait for the LSN) comes before anything that
  changes the replication; on such a failure PgBouncer is resumed on the side it was on.
- DDL is frozen on both primaries (ddl_freeze.py) before the PAUSE and released after the
  RESUME: a schema change on either side now would break the replication being swapped.
- The forward subscription's slot is dropped after the RESUME (nothing reads it any more); a run
  killed before that leaves it to `--finish` or `--rollback`, which drop it.
- The reverse subscription's slot is created while PgBouncer is paused, so it starts before the
  first client write on the destination; the forward subscription is dropped first, so no change
  can travel round in a loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

from pgwarden.config.schema import PgBouncerConfig
from pgwarden.errors import CliError
from pgwarden.routing.pgbouncer import AdminConsole, AdminError, ini_owner, rewrite_targets, set_owner
from pgwarden.upgrade import ddl_freeze
from pgwarden.upgrade import replicate as R

UPGRADE_OWNER = "pgwarden-upgrade"
PAUSE_TIMEOUT = 30.0
APPLY_TIMEOUT = 30.0


@dataclass(frozen=True)
class Side:
    """One cluster as the cutover sees it."""

    cluster: str
    dsn: str  # multi-host, read-write, with the superuser's password
    primary: tuple[str, int]  # where PgBouncer must point to send clients here
    connect: Callable[[], R.Conn]


class Bouncer:
    def __init__(self, cfg: PgBouncerConfig) -> None:
        self.cfg = cfg
        self.console = AdminConsole(cfg.host, cfg.port, cfg.admin.username, cfg.admin.secret())

    @property
    def ini(self) -> Path:
        return self.cfg.config_file

    def target(self) -> tuple[str, int] | None:
        rows = self.console.databases(5.0)
        row = rows.get(self.cfg.databases[0])
        return (row.host or "", row.port) if row is not None else None

    def owner(self) -> str | None:
        return ini_owner(self.ini.read_text())

    def hand_to(self, owner: str | None) -> None:
        set_owner(self.ini, owner)

    def pause(self) -> None:
        for db in self.cfg.databases:
            self.console.command(f"PAUSE {db}", PAUSE_TIMEOUT)

    def resume(self) -> None:
        for db in self.cfg.databases:
            try:
                self.console.command(f"RESUME {db}", 5.0)
            except AdminError as e:
                if "not paused" not in str(e):
                    raise

    def point_at(self, target: tuple[str, int]) -> None:
        host, port = target
        rewrite_targets(self.ini, list(self.cfg.databases), host, port)
        self.console.command("RELOAD", 5.0)

    def close(self) -> None:
        self.console.close()


Say = Callable[[str], None]


def cutover(bouncer: Bouncer, src: Side, dst: Side, active: str, reverse: str | None, say: Say) -> float:
    """Move clients from `src` to `dst`. `active` is the subscription on `dst` that receives
    `src`'s changes; `reverse` (if set) the one created on `src` to receive `dst`'s from now on.
    Returns how long PgBouncer was paused, in seconds."""
    for side in (src, dst):
        _check_primary(side)
    s, d = src.connect(), dst.connect()
    try:
        for conn in (s, d):
            ddl_freeze.freeze(conn)
        bouncer.hand_to(UPGRADE_OWNER)
        started = time.monotonic()
        bouncer.pause()
        switched = False
        marks = [time.monotonic()]
        try:
            lsn = R.wait_applied(s, active, APPLY_TIMEOUT)
            marks.append(time.monotonic())
            say(f"      PgBouncer paused; {dst.cluster} has applied {src.cluster} up to {lsn}")
            n = R.copy_sequences(s, d)
            marks.append(time.monotonic())
            R.drop_subscription(d, None, active)  # its slot on `src` is dropped after the RESUME
            if reverse is not None:
                R.ensure_publication(d)
                R.ensure_subscription(s, d, reverse, dst.dsn, copy_data=False)
            marks.append(time.monotonic())
            bouncer.point_at(dst.primary)
            switched = True
        finally:
            if not switched:  # clients stay where they were; their leader drives PgBouncer again
                bouncer.resume()
                bouncer.hand_to(src.cluster)
                for conn in (s, d):
                    ddl_freeze.release(conn)
        bouncer.resume()
        marks.append(time.monotonic())
        paused = marks[-1] - started
        bouncer.hand_to(dst.cluster)
        for conn in (s, d):
            ddl_freeze.release(conn)
        R.drop_slot_when_free(s, active)
        ms = [f"{(b - a) * 1000:.0f}" for a, b in zip([started, *marks], marks, strict=False)]
        say(f"      {n} sequence(s) copied; PgBouncer now sends clients to {dst.cluster} "
            f"({dst.primary[0]}:{dst.primary[1]}), paused {paused * 1000:.0f} ms (PAUSE {ms[0]}, "
            f"applied {ms[1]}, sequences {ms[2]}, replication swapped {ms[3]}, switch {ms[4]} ms)")
        return paused
    finally:
        s.close()
        d.close()


def _check_primary(side: Side) -> None:
    """Before anything changes: the address PgBouncer would be pointed at (the store's leader)
    must be a writable server now. Right after a failover the leader key may still name the
    dead primary; pointing clients there would strand them (docs/upgrade.md)."""
    host, port = side.primary
    try:
        with psycopg.connect(make_conninfo(side.dsn, host=host, port=str(port), connect_timeout="3",
                                           target_session_attrs="read-write"), autocommit=True):
            pass
    except psycopg.Error as e:
        last = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise CliError(f"{side.cluster}'s leader {host}:{port} does not accept writes now ({last}); "
                       f"is it failing over? Nothing was switched: rerun in a moment") from None


def recover(bouncer: Bouncer, sides: dict[tuple[str, int], Side], fallback: str, say: Say) -> str:
    """After a killed cutover: resume PgBouncer and hand it to the cluster it points at (`sides`
    maps each running cluster's primary to it; `fallback` names the cluster when it points at
    neither), and release the DDL freeze. Returns that cluster's name."""
    for side in sides.values():
        with side.connect() as conn:
            ddl_freeze.release(conn)
    names = {p: side.cluster for p, side in sides.items()}
    target = bouncer.target()
    owner = names.get(target, fallback) if target is not None else fallback
    bouncer.resume()
    bouncer.hand_to(owner)
    say(f"      recovered an interrupted cutover: PgBouncer resumed, sending clients to {owner}")
    return owner
