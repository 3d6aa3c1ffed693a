"""PgBouncer's admin console and its [databases] target: the client and file edits the agent's
router (`pgwarden.routing.router`) uses to keep PgBouncer pointed at the primary.

PgBouncer 1.18 has no command to change a database's host, so the target is changed by rewriting
the database's line in pgbouncer.ini and sending RELOAD; the new host applies to new server
connections, and server connections to the old host are closed once released.
"""

from __future__ import annotations

import fcntl
import os
import re
import select
import shlex
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import pq


class AdminError(Exception):
    """The admin console refused a command or could not be reached."""


class AdminTimeout(AdminError):
    """A command (typically PAUSE waiting for transactions) did not finish before its deadline."""


@dataclass(frozen=True)
class DatabaseRow:
    """One line of SHOW DATABASES."""

    name: str
    host: str | None
    port: int
    paused: bool
    disabled: bool


class AdminConsole:
    """A connection to PgBouncer's `pgbouncer` database. The console speaks only the simple query
    protocol, so commands go through libpq's PQsendQuery, polled against a deadline: PAUSE blocks
    until in-flight transactions end and the caller must be able to give up on it."""

    def __init__(self, host: str, port: int, user: str, password: str, connect_timeout: int = 2) -> None:
        self.conninfo = psycopg.conninfo.make_conninfo(
            host=host, port=port, user=user, password=password, dbname="pgbouncer",
            connect_timeout=max(2, connect_timeout), application_name="pgwarden-router",
        )
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _pgconn(self) -> pq.abc.PGconn:
        if self._conn is None or self._conn.closed:
            try:
                self._conn = psycopg.connect(self.conninfo, autocommit=True)
            except psycopg.Error as e:
                raise AdminError(f"cannot reach the PgBouncer admin console: {e}") from e
        return self._conn.pgconn

    def command(self, sql: str, timeout: float) -> list[dict[str, str | None]]:
        """Run one console command; rows as dicts of text. Raises AdminTimeout (and drops the
        connection, whose answer would otherwise arrive later) past `timeout` seconds."""
        deadline = time.monotonic() + timeout
        pg = self._pgconn()
        try:
            pg.send_query(sql.encode())
            while pg.flush() != 0:
                self._wait(pg, deadline, write=True)
            while True:
                pg.consume_input()
                if not pg.is_busy():
                    break
                self._wait(pg, deadline, write=False)
            rows: list[dict[str, str | None]] = []
            error: str | None = None
            while (res := pg.get_result()) is not None:
                if res.status == pq.ExecStatus.FATAL_ERROR:
                    error = (res.error_message or b"").decode(errors="replace").strip()
                elif res.status == pq.ExecStatus.TUPLES_OK:
                    names = [(res.fname(i) or b"").decode() for i in range(res.nfields)]
                    for r in range(res.ntuples):
                        vals = [res.get_value(r, i) for i in range(res.nfields)]
                        rows.append({n: (v.decode() if v is not None else None)
                                     for n, v in zip(names, vals, strict=True)})
        except AdminTimeout:
            self.close()
            raise
        except (psycopg.Error, OSError) as e:
            self.close()
            raise AdminError(f"PgBouncer admin console: {e}") from e
        if error is not None:
            raise AdminError(f"PgBouncer refused {sql!r}: {error}")
        return rows

    @staticmethod
    def _wait(pg: pq.abc.PGconn, deadline: float, write: bool) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AdminTimeout("PgBouncer did not answer in time")
        fd = pg.socket
        r, w, _ = select.select([] if write else [fd], [fd] if write else [], [], min(left, 0.5))
        del r, w

    def databases(self, timeout: float) -> dict[str, DatabaseRow]:
        out = {}
        for row in self.command("SHOW DATABASES", timeout):
            name = row.get("name") or ""
            out[name] = DatabaseRow(
                name=name, host=row.get("host") or None, port=int(row.get("port") or 0),
                paused=(row.get("paused") or "0") == "1", disabled=(row.get("disabled") or "0") == "1",
            )
        return out

    def server_count(self, database: str, timeout: float) -> int:
        return sum(1 for r in self.command("SHOW SERVERS", timeout) if r.get("database") == database)


# -- pgbouncer.ini ------------------------------------------------------------------------------

_SECTION = re.compile(r"^\s*\[([^\]]+)\]\s*$")


def _parse_connstr(value: str) -> list[tuple[str, str]]:
    # PgBouncer's database line: key=value pairs, values optionally in single quotes.
    out = []
    for token in shlex.split(value, posix=True):
        key, sep, val = token.partition("=")
        if not sep:
            raise ValueError(f"cannot parse database entry {value!r}")
        out.append((key.strip(), val))
    return out


def _format_connstr(pairs: list[tuple[str, str]]) -> str:
    def q(v: str) -> str:
        return v if v and re.fullmatch(r"[\w.:/@-]+", v) else "'" + v.replace("'", "''") + "'"
    return " ".join(f"{k}={q(v)}" for k, v in pairs)


def set_database_targets(text: str, databases: list[str], host: str, port: int) -> str:
    """The ini text with host= and port= of each named [databases] entry replaced (other keys and
    lines kept as they are). Raises ValueError when an entry is missing."""
    lines = text.splitlines(keepends=True)
    section = ""
    found: set[str] = set()
    for i, line in enumerate(lines):
        m = _SECTION.match(line)
        if m:
            section = m.group(1).strip().lower()
            continue
        if section != "databases" or line.lstrip().startswith((";", "#")) or "=" not in line:
            continue
        key, _, value = line.partition("=")
        name = key.strip().strip('"')
        if name not in databases:
            continue
        pairs = [(k, v) for k, v in _parse_connstr(value.strip()) if k not in ("host", "port")]
        pairs = [("host", host), ("port", str(port)), *pairs]
        end = "\n" if line.endswith("\n") else ""
        lines[i] = f"{key.rstrip()} = {_format_connstr(pairs)}{end}"
        found.add(name)
    missing = [d for d in databases if d not in found]
    if missing:
        raise ValueError(f"no [databases] entry for {', '.join(missing)}")
    return "".join(lines)


def rewrite_targets(path: Path, databases: list[str], host: str, port: int) -> bool:
    """Point the databases at host:port in the ini file, atomically and keeping its owner and mode
    (PgBouncer runs as another OS user and must still read it). False when nothing changed."""
    old = path.read_text()
    new = set_database_targets(old, databases, host, port)
    if new == old:
        return False
    write_keeping_owner(path, new)
    return True


# -- who may drive PgBouncer -------------------------------------------------------------------
# During an online major-version upgrade (`pgwarden local upgrade`, docs/upgrade.md) two clusters'
# agents have PgBouncer configured. A comment line in pgbouncer.ini names the one cluster whose
# leader may retarget, PAUSE and RESUME it; without the line every configured leader may (one
# cluster, as before). The upgrade changes the line under an exclusive flock of the ini's
# directory, and a router holds a shared one while it reads the line and acts, so once the
# upgrade has written the line no router is still acting on the old owner.

OWNER_PREFIX = ";; pgwarden-owner:"


def ini_owner(text: str) -> str | None:
    """The cluster named by the owner line, or None when there is none (any leader drives it)."""
    for line in text.splitlines():
        if line.startswith(OWNER_PREFIX):
            return line[len(OWNER_PREFIX):].strip() or None
    return None


def set_ini_owner(text: str, owner: str | None) -> str:
    """The ini text with its owner line set to `owner` (None removes it); first line if new."""
    lines = [ln for ln in text.splitlines(keepends=True) if not ln.startswith(OWNER_PREFIX)]
    if owner is None:
        return "".join(lines)
    return f"{OWNER_PREFIX} {owner}\n" + "".join(lines)


def may_drive(text: str, cluster: str) -> bool:
    owner = ini_owner(text)
    return owner is None or owner == cluster


@contextmanager
def ini_lock(path: Path, shared: bool, wait: bool = True) -> Iterator[bool]:
    """flock on the ini's directory (the file itself is replaced on every rewrite). Yields False
    when `wait` is False and the lock is held elsewhere."""
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        flags = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB)
        try:
            fcntl.flock(fd, flags)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def write_keeping_owner(path: Path, new: str) -> None:
    """Replace the file atomically, keeping its owner and mode (PgBouncer runs as another OS user
    and must still read it)."""
    st = path.stat()
    tmp = path.with_name(f".{path.name}.pgwarden.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, st.st_mode & 0o777)
    with os.fdopen(fd, "w") as f:
        f.write(new)
    try:
        os.chown(tmp, st.st_uid, st.st_gid)
    except PermissionError:
        pass  # not root: the file stays ours, readable per its mode
    os.replace(tmp, path)


def set_owner(path: Path, owner: str | None) -> None:
    """Hand PgBouncer to `owner`'s leader (None: to any configured leader)."""
    with ini_lock(path, shared=False):
        old = path.read_text()
        new = set_ini_owner(old, owner)
        if new != old:
            write_keeping_owner(path, new)
