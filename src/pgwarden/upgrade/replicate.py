"""The upgrade's logical replication, by plain SQL on the two primaries: one publication of every
table on each side, the forward subscription (new from old) and, from the cutover until
`--finish`, the reverse one (old from new). Every function is idempotent, so a rerun after a kill
redoes it safely: a slot left on a source by a killed CREATE SUBSCRIPTION is dropped first."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

PUBLICATION = "pgwarden_upgrade"
FORWARD = "pgwarden_upgrade_fwd"  # on the new cluster, from the old one
REVERSE = "pgwarden_upgrade_rev"  # on the old cluster, from the new one

Conn = psycopg.Connection[Any]


class ReplicationError(Exception):
    pass


def ensure_publication(conn: Conn) -> None:
    if conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (PUBLICATION,)).fetchone() is None:
        conn.execute(sql.SQL("CREATE PUBLICATION {} FOR ALL TABLES").format(sql.Identifier(PUBLICATION)))


def drop_publication(conn: Conn) -> None:
    conn.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(PUBLICATION)))


def has_subscription(conn: Conn, name: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_subscription WHERE subname = %s", (name,)).fetchone() is not None


def drop_slot(source: Conn, name: str) -> None:
    source.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                   "WHERE slot_name = %s AND NOT active", (name,))


def ensure_subscription(conn: Conn, source: Conn, name: str, source_dsn: str, copy_data: bool) -> None:
    """`conn` subscribes to the publication of `source` (reached by the apply worker at
    `source_dsn`). A subscription's slot is named after it."""
    if has_subscription(conn, name):
        return
    drop_slot(source, name)  # left by a killed run: it would make CREATE SUBSCRIPTION fail
    conn.execute(sql.SQL("CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {} "
                         "WITH (copy_data = {}, slot_name = {})").format(
        sql.Identifier(name), sql.Literal(source_dsn), sql.Identifier(PUBLICATION),
        sql.Literal(copy_data), sql.Literal(name)))


def drop_subscription(conn: Conn, source: Conn | None, name: str) -> None:
    """Drop the subscription and its slot on the source (also when the source cannot be reached
    from the subscriber: then the slot is dropped through `source`)."""
    if has_subscription(conn, name):
        ident = sql.Identifier(name)
        conn.execute(sql.SQL("ALTER SUBSCRIPTION {} DISABLE").format(ident))
        conn.execute(sql.SQL("ALTER SUBSCRIPTION {} SET (slot_name = NONE)").format(ident))
        conn.execute(sql.SQL("DROP SUBSCRIPTION {}").format(ident))
    if source is not None:
        drop_slot_when_free(source, name)


def drop_slot_when_free(source: Conn, name: str, timeout: float = 30.0) -> None:
    """Drop the slot once no walsender uses it (the subscriber's may take a moment to exit)."""
    deadline = time.monotonic() + timeout
    while True:
        drop_slot(source, name)
        if source.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s",
                          (name,)).fetchone() is None:
            return
        if time.monotonic() > deadline:
            raise ReplicationError(f"slot {name} is still in use on the source after {timeout:g} s")
        time.sleep(0.05)


def table_states(conn: Conn, name: str) -> dict[str, str]:
    """Per-table state of the subscription's initial copy (pg_subscription_rel.srsubstate:
    i initialize, d copying, f finished copy, s synchronized, r ready)."""
    rows = conn.execute(
        "SELECT n.nspname || '.' || c.relname, r.srsubstate FROM pg_subscription_rel r "
        "JOIN pg_subscription s ON s.oid = r.srsubid JOIN pg_class c ON c.oid = r.srrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE s.subname = %s", (name,)).fetchall()
    return {str(t): str(s) for t, s in rows}


def lag_bytes(source: Conn, name: str) -> int | None:
    """How far the subscription's slot trails the source's WAL (None: no such slot)."""
    row = source.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint "
                         "FROM pg_replication_slots WHERE slot_name = %s", (name,)).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def wait_applied(source: Conn, name: str, timeout: float, tick: Callable[[], None] = lambda: None) -> str:
    """Wait until the subscriber has applied (and flushed) everything the source wrote up to now:
    the slot's confirmed position reaches the source's current WAL position. Returns that LSN."""
    row = source.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    assert row is not None
    target = str(row[0])
    deadline = time.monotonic() + timeout
    while True:
        got = source.execute("SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots "
                             "WHERE slot_name = %s", (target, name)).fetchone()
        if got is None:
            raise ReplicationError(f"no slot {name} on the source")
        if got[0]:
            return target
        if time.monotonic() > deadline:
            raise ReplicationError(f"the subscriber did not apply up to {target} within {timeout:g} s")
        tick()
        time.sleep(0.005)


SEQUENCES = "SELECT schemaname, sequencename FROM pg_sequences ORDER BY 1, 2"


def copy_sequences(source: Conn, dest: Conn) -> int:
    """Copy every sequence's exact state (last_value, is_called): logical replication does not
    carry sequences, and the next nextval() on `dest` must return what it would have on `source`."""
    names = source.execute(SEQUENCES).fetchall()
    if not names:
        return 0
    parts = [sql.SQL("SELECT {}, {}, last_value, is_called FROM {}.{}").format(
        sql.Literal(s), sql.Literal(n), sql.Identifier(s), sql.Identifier(n)) for s, n in names]
    rows = source.execute(sql.SQL(" UNION ALL ").join(parts)).fetchall()
    with dest.transaction():
        for s, n, value, called in rows:
            qualified = sql.SQL("{}.{}").format(sql.Identifier(s), sql.Identifier(n)).as_string(dest)
            dest.execute("SELECT setval(%s::regclass, %s, %s)", (qualified, value, called))
    return len(rows)
