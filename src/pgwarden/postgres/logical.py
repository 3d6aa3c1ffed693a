"""Logical replication on a PostgreSQL server: reading the publications and subscriptions it holds,
applying the core's changes (core/logical.py), copying a published table's definition, and
reading a subscription's progress. Names are checked by the core (unquoted identifiers), and
every statement quotes them again; connection strings are passed as literals.

Publications and subscriptions live in the database the agent connects to (`postgres`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql as Q

from pgwarden.core import logical as L
from pgwarden.core.gate import GATE_PARAMETER
from pgwarden.postgres import slot_copies

log = logging.getLogger("pgwarden.postgres")


def _ident(dotted: str) -> Q.Composable:
    return Q.Identifier(*dotted.split("."))


def read_objects(conn: psycopg.Connection[Any]) -> L.LogicalObjects:
    pubs = conn.execute(
        "SELECT pubname, obj_description(oid, 'pg_publication') FROM pg_publication").fetchall()
    subs = conn.execute(
        "SELECT subname, obj_description(oid, 'pg_subscription') FROM pg_subscription "
        "WHERE subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())").fetchall()
    return L.LogicalObjects({str(r[0]): r[1] for r in pubs}, {str(r[0]): r[1] for r in subs},
                            slot_copies.read_slots(conn))


def publication_sql(spec: L.PublicationSpec) -> Q.Composed:
    if spec.all_tables:
        return Q.SQL("CREATE PUBLICATION {} FOR ALL TABLES").format(Q.Identifier(spec.name))
    items: list[Q.Composable] = []
    for t in spec.tables:
        item: Q.Composable = _ident(t)
        if t in spec.columns:
            item = Q.SQL("{} ({})").format(item, Q.SQL(", ").join(Q.Identifier(c) for c in spec.columns[t]))
        if t in spec.where:
            # An operator's expression: checked to be one line without ';'; PostgreSQL refuses
            # anything but a simple expression on the table's own columns.
            item = Q.SQL("{} WHERE ({})").format(item, Q.SQL(spec.where[t]))  # type: ignore[arg-type]
        items.append(item)
    return Q.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(
        Q.Identifier(spec.name), Q.SQL(", ").join(items))


def create_publication(conn: psycopg.Connection[Any], spec: L.PublicationSpec, replace: bool) -> None:
    """One transaction: (drop the old one,) identities, create, mark. A subscriber decodes each
    change with the publication as it stood at that change, so replacing it is atomic for it."""
    with conn.transaction():
        if replace:
            conn.execute(Q.SQL("DROP PUBLICATION IF EXISTS {}").format(Q.Identifier(spec.name)))
        for t in spec.identity_full:
            conn.execute(Q.SQL("ALTER TABLE {} REPLICA IDENTITY FULL").format(_ident(t)))
        conn.execute(publication_sql(spec))
        conn.execute(Q.SQL("COMMENT ON PUBLICATION {} IS {}").format(
            Q.Identifier(spec.name), Q.Literal(L.digest(spec))))


def source_connect(dsn: str, timeout: float) -> psycopg.Connection[Any]:
    return psycopg.connect(dsn, connect_timeout=max(2, math.ceil(timeout)), autocommit=True,
                           options=f"-c statement_timeout={max(1, int(timeout * 1000))}")


def window_open(src: psycopg.Connection[Any], subscriber_major: int) -> str | None:
    """`core.logical.window_reason` for a subscription over `src` made on a PostgreSQL
    `subscriber_major` server."""
    row = src.execute("SELECT current_setting('synchronous_standby_names')").fetchone()
    return L.window_reason(src.info.server_version // 10000, subscriber_major,
                           str(row[0]) if row else "",
                           src.info.parameter_status(GATE_PARAMETER) == "on")


@dataclass(frozen=True)
class SourceTable:
    name: str  # schema.table
    columns: tuple[tuple[str, str, bool], ...]  # name, type, not null
    primary_key: tuple[str, ...]
    identity: str  # relreplident: d(efault), f(ull), i(ndex), n(othing)


def published_tables(src: psycopg.Connection[Any], publications: tuple[str, ...]) -> list[SourceTable]:
    """The tables `publications` share, with the columns each publishes. ValueError when one of
    the publications does not exist on the source."""
    have = {str(r[0]) for r in src.execute(
        "SELECT pubname FROM pg_publication WHERE pubname = ANY(%s)", (list(publications),))}
    missing = [p for p in publications if p not in have]
    if missing:
        raise ValueError(f"publication {missing[0]} does not exist on the source")
    rows = src.execute(
        "SELECT DISTINCT schemaname, tablename FROM pg_publication_tables WHERE pubname = ANY(%s) "
        "ORDER BY 1, 2", (list(publications),)).fetchall()
    out: list[SourceTable] = []
    for schema, table in rows:
        name = f"{schema}.{table}"
        ident = Q.Identifier(schema, table).as_string(src)
        # Published columns: the union of the publications' column lists (all when none has one).
        cols = src.execute(
            "SELECT DISTINCT unnest(attnames) FROM pg_publication_tables "
            "WHERE pubname = ANY(%s) AND schemaname = %s AND tablename = %s",
            (list(publications), schema, table)).fetchall()
        published = {str(r[0]) for r in cols}
        attrs = src.execute(
            "SELECT attname, format_type(atttypid, atttypmod), attnotnull FROM pg_attribute "
            "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            (ident,)).fetchall()
        pk = src.execute(
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
            "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s::regclass AND i.indisprimary",
            (ident,)).fetchall()
        ri = src.execute("SELECT relreplident FROM pg_class WHERE oid = %s::regclass", (ident,)).fetchone()
        out.append(SourceTable(
            name, tuple((str(a), str(t), bool(nn)) for a, t, nn in attrs if not published or a in published),
            tuple(str(r[0]) for r in pk), str(ri[0]) if ri else "d"))
    return out


def without_identity(tables: list[SourceTable]) -> list[str]:
    """Tables whose UPDATE and DELETE the subscriber could not match to a row."""
    return [t.name for t in tables if t.identity == "n" or (t.identity == "d" and not t.primary_key)]


def create_tables(conn: psycopg.Connection[Any], tables: list[SourceTable]) -> list[str]:
    """Create the tables that are missing (schema only: columns, NOT NULL, primary key). Returns
    the ones created."""
    made: list[str] = []
    with conn.transaction():
        for t in tables:
            schema, name = t.name.split(".")
            qualified = Q.Identifier(schema, name).as_string(conn)
            exists = conn.execute("SELECT to_regclass(%s)", (qualified,)).fetchone()
            if exists and exists[0] is not None:
                continue
            parts: list[Q.Composable] = [
                Q.SQL("{} {}{}").format(Q.Identifier(c), Q.SQL(typ),  # type: ignore[arg-type]
                                        Q.SQL(" NOT NULL" if nn else ""))
                for c, typ, nn in t.columns]
            cols = {c for c, _, _ in t.columns}
            if t.primary_key and set(t.primary_key) <= cols:
                parts.append(Q.SQL("PRIMARY KEY ({})").format(
                    Q.SQL(", ").join(Q.Identifier(c) for c in t.primary_key)))
            conn.execute(Q.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(Q.Identifier(schema)))
            conn.execute(Q.SQL("CREATE TABLE {} ({})").format(
                Q.Identifier(schema, name), Q.SQL(", ").join(parts)))
            made.append(t.name)
    return made


def create_subscription(conn: psycopg.Connection[Any], spec: L.SubscriptionSpec, timeout: float) -> None:
    """Copy the schema if asked, create the subscription (its slot on the source: `failover`
    when both sides run 17 or later) and mark it. A failure after the tables were made drops
    them again, so nothing is left half-created."""
    with source_connect(spec.source, timeout) as src:
        src_version = src.info.server_version // 10000
        tables = published_tables(src, spec.publications) if spec.copy_schema else []
    made = create_tables(conn, tables) if tables else []
    ours = conn.info.server_version // 10000
    opts: list[Q.Composable] = [Q.SQL("copy_data = {}").format(Q.SQL("true" if spec.copy_data else "false"))]
    if L.failover_slots(src_version, ours):
        opts.append(Q.SQL("failover = true"))
    try:
        conn.execute(Q.SQL("CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {} WITH ({})").format(
            Q.Identifier(spec.name), Q.Literal(spec.source),
            Q.SQL(", ").join(Q.Identifier(p) for p in spec.publications), Q.SQL(", ").join(opts)))
    except psycopg.Error:
        if made:
            with conn.transaction():
                for t in made:
                    conn.execute(Q.SQL("DROP TABLE IF EXISTS {}").format(_ident(t)))
        raise
    conn.execute(Q.SQL("COMMENT ON SUBSCRIPTION {} IS {}").format(
        Q.Identifier(spec.name), Q.Literal(L.digest(spec))))


def alter_subscription(conn: psycopg.Connection[Any], spec: L.SubscriptionSpec) -> None:
    name = Q.Identifier(spec.name)
    conn.execute(Q.SQL("ALTER SUBSCRIPTION {} CONNECTION {}").format(name, Q.Literal(spec.source)))
    conn.execute(Q.SQL("ALTER SUBSCRIPTION {} SET PUBLICATION {} WITH (copy_data = {})").format(
        name, Q.SQL(", ").join(Q.Identifier(p) for p in spec.publications),
        Q.SQL("true" if spec.copy_data else "false")))
    conn.execute(Q.SQL("COMMENT ON SUBSCRIPTION {} IS {}").format(name, Q.Literal(L.digest(spec))))


def drop_subscription(conn: psycopg.Connection[Any], name: str) -> None:
    """DROP SUBSCRIPTION, which drops its slot on the source; it fails while the source does not
    answer (the slot would be left behind), and the leader tries again next loop."""
    conn.execute(Q.SQL("DROP SUBSCRIPTION IF EXISTS {}").format(Q.Identifier(name)))


def apply_change(conn: psycopg.Connection[Any], change: L.LogicalChange, timeout: float) -> None:
    match change:
        case L.CreatePublication(spec=spec):
            create_publication(conn, spec, replace=False)
        case L.ReplacePublication(spec=spec):
            create_publication(conn, spec, replace=True)
        case L.DropPublication(name=name):
            conn.execute(Q.SQL("DROP PUBLICATION IF EXISTS {}").format(Q.Identifier(name)))
        case L.CreateSubscription(spec=spec):
            create_subscription(conn, spec, timeout)
        case L.AlterSubscription(spec=spec):
            alter_subscription(conn, spec)
        case L.DropSubscription(name=name):
            drop_subscription(conn, name)
