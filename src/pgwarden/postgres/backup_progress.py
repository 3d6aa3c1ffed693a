"""Progress of base backups on the terminal: `node clone` (its own pg_basebackup's --progress
lines), `ctl reinit` and `local up` (the source primary's pg_stat_progress_basebackup, which
shows every member's clone: the agents run pg_basebackup with application_name
pgwarden-clone-NAME). One rich progress bar per member on stderr when it is a terminal; the
rows and the parsing are pure functions."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from pgwarden.postgres import sql
from pgwarden.postgres.basebackup_output import Progress as ProgressCallback

APP_PREFIX = "pgwarden-clone-"  # the application_name of a member's pg_basebackup (provision.py)
QUERY = ("SELECT a.application_name, p.phase, p.backup_total, p.backup_streamed "
         "FROM pg_stat_progress_basebackup p JOIN pg_stat_activity a ON a.pid = p.pid")


@dataclass(frozen=True)
class BackupRow:
    """One base backup running on the source, as pg_stat_progress_basebackup shows it."""

    member: str
    phase: str
    done: int
    total: int | None  # NULL until the size is estimated (and with --no-estimate-size)


@dataclass(frozen=True)
class ViewRow:
    """What one member's bar shows: its text, and bytes (None: no bytes to show now)."""

    member: str
    text: str
    done: int | None
    total: int | None


def backups_by_member(rows: Iterable[tuple[Any, ...]]) -> dict[str, BackupRow]:
    """QUERY's rows by member name; backups of other clients (not pgwarden-clone-*) left out."""
    out: dict[str, BackupRow] = {}
    for app, phase, total, streamed in rows:
        if not isinstance(app, str) or not app.startswith(APP_PREFIX) or len(app) == len(APP_PREFIX):
            continue
        name = app[len(APP_PREFIX):]
        out[name] = BackupRow(name, str(phase), int(streamed or 0), None if total is None else int(total))
    return out


def view_row(member: str, state: str | None, backup: BackupRow | None) -> ViewRow:
    """A member's bar: its base backup's phase and bytes while one runs on the source, else the
    state the member reports (`cloning from node1`, `running`, or unknown while it publishes none)."""
    if backup is not None:
        total = backup.total if backup.total is None else max(backup.total, backup.done)
        return ViewRow(member, f"{member}: {backup.phase}", backup.done, total)
    return ViewRow(member, f"{member}: {state or 'state unknown'}", None, None)


def plain_line(row: ViewRow) -> str:
    """The row as a line of text, for output that is not a terminal."""
    if row.done is None or (row.done == 0 and row.total is None):  # no bytes to tell yet
        return row.text
    total = f"/{_mb(row.total)}" if row.total is not None else ""
    return f"{row.text} ({_mb(row.done)}{total} MB)"


def _mb(n: int | None) -> str:
    return "?" if n is None else f"{n / 1e6:.1f}"


# -- reading the source ----------------------------------------------------------------------------


class BackupPoller:
    """pg_stat_progress_basebackup on the source primary over one superuser connection, opened
    again after an error; a poll that fails shows no backups rather than failing the command."""

    def __init__(self, params: sql.ConnParams, timeout: float = 2.0) -> None:
        self.params = params
        self.timeout = timeout
        self._conn: psycopg.Connection[Any] | None = None
        self.error = ""

    def poll(self) -> dict[str, BackupRow]:
        try:
            if self._conn is None or self._conn.closed:
                self._conn = sql.connect(self.params, self.timeout)
            rows = self._conn.execute(QUERY).fetchall()
        except (psycopg.Error, OSError) as e:
            self.error = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            self.close()
            return {}
        self.error = ""
        return backups_by_member(rows)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


# -- showing it ------------------------------------------------------------------------------------


def stderr_console() -> Console:
    return Console(stderr=True)


class Bars:
    """One rich bar per member on a terminal (bytes, rate, time left); nothing otherwise (the
    command prints its own lines then). Use as a context manager."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or stderr_console()
        self.live = self.console.is_terminal
        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
            TimeRemainingColumn(), console=self.console, transient=False,
        ) if self.live else None
        self._tasks: dict[str, TaskID] = {}
        self._totals: dict[str, int] = {}  # the last known size of each member's backup

    def __enter__(self) -> Bars:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def show(self, row: ViewRow) -> None:
        if self._progress is None:
            return
        task = self._tasks.get(row.member)
        if task is None:
            task = self._tasks[row.member] = self._progress.add_task(row.text, total=None)
        fields: dict[str, Any] = {"description": row.text}
        if row.done is not None:
            fields.update(completed=row.done, total=row.total)
            if row.total is not None:
                self._totals[row.member] = row.total
        self._progress.update(task, **fields)

    def finish(self, member: str, text: str) -> None:
        """The member is done: its bar full (the source's view ends before the last bytes
        show), with `text`."""
        total = self._totals.get(member)
        if total is None:
            self.show(ViewRow(member, text, None, None))
        else:
            self.show(ViewRow(member, text, total, total))


@contextmanager
def clone_progress(source: str, console: Console | None = None) -> Iterator[ProgressCallback]:
    """For `node clone`: a callback for DataDirectory.clone(progress=...) drawing one bar on a
    terminal; otherwise one line at the end (bytes, time, rate)."""
    seen = [0, 0]
    started = time.monotonic()
    with Bars(console) as bars:

        def report(done: int, total: int) -> None:
            seen[:] = [done, total]
            bars.show(ViewRow("clone", f"copying from {source}", done, total))

        yield report
    if not bars.live and seen[0]:
        took = max(0.001, time.monotonic() - started)
        bars.console.print(f"pgwarden: copied {seen[0] / 1e6:.1f} MB from {source} in {took:.1f} s "
                           f"({seen[0] / 1e6 / took:.1f} MB/s)", highlight=False, soft_wrap=True)
