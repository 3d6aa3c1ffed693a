"""`pgwarden ctl -c FILE logical publish|subscribe|status|drop`: declared logical replication.

The commands check everything they can first (against this cluster's primary and the source),
then write the declaration into the cluster settings and wait for the leader to carry it out
(core/logical.py). A declaration the leader cannot carry out in time is taken back, so a failed
command leaves nothing half-created on either side.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql as Q

from pgwarden.cli.ctl_context import Ctx, update_settings
from pgwarden.cli.logical_status import PG_TIMEOUT, cmd_status, first_line, primary_conn
from pgwarden.cli.output import CliError, UsageError
from pgwarden.config.load import replace
from pgwarden.core import logical as L
from pgwarden.core.settings import ClusterSettings
from pgwarden.postgres import logical as pglogical
from pgwarden.report import redact

DROP_WAIT = 30.0  # seconds `drop` waits for the leader's own drop after a conflict with it
APPLY_TIMEOUT = 30.0  # the leader's loop plus a slot's consistent snapshot on the source


def register(cmds: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    lg = cmds.add_parser("logical", help="publications and subscriptions (logical replication)")
    sub = lg.add_subparsers(dest="logical_command", metavar="COMMAND", required=True)

    p = sub.add_parser("publish", help="share tables of this cluster")
    p.add_argument("name")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--tables", help="schema.table[,schema.table...]")
    what.add_argument("--all-tables", action="store_true", help="every table, also ones created later")
    p.add_argument("--where", action="append", default=[], metavar="TABLE=EXPR", help="a row filter")
    p.add_argument("--columns", action="append", default=[], metavar="TABLE=COL,COL",
                   help="publish only these columns")
    p.add_argument("--replica-identity", choices=("full",),
                   help="tables without a primary key: identify rows by all their columns")
    p.set_defaults(ctl_func=cmd_publish)

    p = sub.add_parser("subscribe", help="receive another cluster's publications")
    p.add_argument("name")
    p.add_argument("--source", required=True, help="libpq string of the source (`ctl dsn` prints one)")
    p.add_argument("--publications", required=True, help="publication[,publication...]")
    p.add_argument("--copy-schema", action="store_true", help="create the published tables here first")
    p.add_argument("--no-copy-data", action="store_true", help="skip the initial copy of existing rows")
    p.add_argument("--replica-identity", choices=("full",),
                   help="accept source tables without a primary key (rows matched by all columns)")
    p.add_argument("--without-gate", action="store_true",
                   help="accept a PostgreSQL 15/16 source in synchronous mode reached directly, "
                        "not through `ctl dsn --logical` (its asynchronous window stays open)")
    p.set_defaults(ctl_func=cmd_subscribe)

    p = sub.add_parser("status", help="publications, subscriptions, lag and slot copies")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(ctl_func=cmd_status)

    p = sub.add_parser("refresh", help="a subscription picks up tables added to its publications")
    p.add_argument("name")
    p.add_argument("--copy-schema", action="store_true", help="create the new tables here first")
    p.set_defaults(ctl_func=cmd_refresh)

    p = sub.add_parser("drop", help="drop a publication or a subscription (and its slot on the source)")
    p.add_argument("name")
    p.set_defaults(ctl_func=cmd_drop)


# -- helpers -----------------------------------------------------------------------------------


def split_list(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def pairs(items: list[str], flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        table, sep, value = item.partition("=")
        if not sep or not table.strip() or not value.strip():
            raise UsageError(f"{flag} {item!r}: write it as schema.table=..., "
                             f"e.g. {flag} \"public.orders=region = 'eu'\"")
        out[table.strip()] = value.strip()
    return out


def not_applied(kind: str, name: str) -> str:
    return (f"the leader did not create {kind} {name} within {APPLY_TIMEOUT:.0f} s (see its log); "
            f"the declaration was taken back")


def declared(s: ClusterSettings, name: str) -> str | None:
    if any(p.name == name for p in s.publications):
        return "publication"
    if any(x.name == name for x in s.subscriptions):
        return "subscription"
    return None


def wait_applied(ctx: Ctx, ready: Callable[[L.LogicalObjects], bool], what: str) -> bool:
    """Poll the primary until `ready`, for APPLY_TIMEOUT."""
    deadline = time.monotonic() + APPLY_TIMEOUT
    while time.monotonic() < deadline:
        try:
            with primary_conn(ctx) as conn:
                if ready(pglogical.read_objects(conn)):
                    return True
        except CliError:
            pass  # a failover in between: ask the next primary
        time.sleep(0.5)
    return False


def take_back(ctx: Ctx, name: str, why: str) -> CliError:
    """Remove a declaration the leader did not carry out, and whatever it made of it."""
    update_settings(ctx.store, lambda s: replace(
        s, publications=tuple(p for p in s.publications if p.name != name),
        subscriptions=tuple(x for x in s.subscriptions if x.name != name)))
    try:
        with primary_conn(ctx) as conn:
            have = pglogical.read_objects(conn)
            if (have.subscriptions.get(name) or "").startswith(L.MARK):
                pglogical.drop_subscription(conn, name)
            if (have.publications.get(name) or "").startswith(L.MARK):
                conn.execute(Q.SQL("DROP PUBLICATION IF EXISTS {}").format(Q.Identifier(name)))
    except (psycopg.Error, CliError):
        pass  # the leader drops what is no longer declared
    return CliError(why)


def refuse_existing(ctx: Ctx, conn: psycopg.Connection[Any], name: str) -> None:
    kind = declared(ctx.snapshot().settings, name)
    if kind is not None:
        raise CliError(f"a {kind} named {name} is already declared; pick another name or "
                       f"`pgwarden ctl -c {ctx.path} logical drop {name}` first")
    have = pglogical.read_objects(conn)
    if name in have.publications or name in have.subscriptions:
        kind = "publication" if name in have.publications else "subscription"
        raise CliError(f"a {kind} named {name} already exists on the primary (not made by pgwarden); "
                       f"pick another name")


# -- publish -----------------------------------------------------------------------------------


def cmd_publish(args: argparse.Namespace, ctx: Ctx) -> int:
    where = pairs(args.where, "--where")
    columns = {t: split_list(c) for t, c in pairs(args.columns, "--columns").items()}
    try:
        spec = L.PublicationSpec(name=args.name, tables=split_list(args.tables or ""),
                                 all_tables=args.all_tables, where=where, columns=columns)
    except ValueError as e:
        raise UsageError(str(e)) from None
    with primary_conn(ctx) as conn:
        refuse_existing(ctx, conn, spec.name)
        level = conn.execute("SHOW wal_level").fetchone()
        if level is None or level[0] != "logical":
            raise CliError(f"wal_level is {level[0] if level else '?'} here, and publishing needs logical: "
                           f"`pgwarden ctl -c {ctx.path} edit-config --set parameters.wal_level=logical`, "
                           f"then restart each member (`ctl restart NODE`, replicas first)")
        lacking = check_tables(conn, spec.tables)
        if lacking and args.replica_identity != "full":
            raise CliError(
                f"table {lacking[0]} has no primary key or replica identity: once published, UPDATE "
                f"and DELETE on it would fail on this cluster (and a subscriber could not find the "
                f"row); add a primary key, or pass --replica-identity full (rows are then "
                f"identified by all their columns, which is slower)")
        spec = replace(spec, identity_full=tuple(lacking))
        try:  # PostgreSQL's own checks (row filter, columns), then nothing kept
            with conn.transaction(force_rollback=True):
                conn.execute(pglogical.publication_sql(spec))
        except psycopg.Error as e:
            raise CliError(f"publication {spec.name}: {first_line(e)}") from None
    update_settings(ctx.store, lambda s: replace(s, publications=(*s.publications, spec)))
    mark = L.digest(spec)
    if not wait_applied(ctx, lambda h: h.publications.get(spec.name) == mark, "publication"):
        raise take_back(ctx, spec.name, not_applied("publication", spec.name))
    what = "every table" if spec.all_tables else ", ".join(spec.tables)
    print(f"publication {spec.name} created: {what}")
    return 0


def check_tables(conn: psycopg.Connection[Any], tables: tuple[str, ...]) -> list[str]:
    """CliError for a table that does not exist; the ones with no way to identify a row."""
    lacking: list[str] = []
    for t in tables:
        schema, name = t.split(".")
        row = conn.execute(
            "SELECT c.relreplident, EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid "
            "AND i.indisprimary) FROM pg_class c WHERE c.oid = to_regclass(%s)",
            (Q.Identifier(schema, name).as_string(conn),)).fetchone()
        if row is None:
            raise CliError(f"table {t} does not exist on the primary; create it first or fix the name")
        ident, has_pk = str(row[0]), bool(row[1])
        if ident == "n" or (ident == "d" and not has_pk):
            lacking.append(t)
    return lacking


# -- subscribe ---------------------------------------------------------------------------------


def cmd_subscribe(args: argparse.Namespace, ctx: Ctx) -> int:
    try:
        spec = L.SubscriptionSpec(name=args.name, source=args.source,
                                  publications=split_list(args.publications),
                                  copy_data=not args.no_copy_data, copy_schema=args.copy_schema)
    except ValueError as e:
        raise UsageError(str(e)) from None
    with primary_conn(ctx) as conn:
        refuse_existing(ctx, conn, spec.name)
        try:
            src = pglogical.source_connect(spec.source, PG_TIMEOUT)
        except psycopg.Error as e:
            raise CliError(f"cannot reach the source {redact(spec.source)}: {first_line(e)}") from None
        with src:
            if src.execute("SELECT pg_is_in_recovery()").fetchone() == (True,):
                raise CliError(f"the source {redact(spec.source)} is a standby; give the source "
                               f"cluster's primary (`ctl dsn` prints a string that finds it)")
            window = pglogical.window_open(src, conn.info.server_version // 10000)
            if window is not None and not args.without_gate:
                raise CliError(
                    f"{window} and {redact(spec.source)} does not go through a logical gate: after "
                    f"a source failover this subscriber could hold transactions the new primary "
                    f"lacks; use the string `pgwarden ctl -c SOURCE.yaml dsn --logical` prints "
                    f"(postgresql.logical_gate_port), or pass --without-gate to accept that")
            try:
                tables = pglogical.published_tables(src, spec.publications)
            except ValueError as e:
                raise CliError(f"{e}; `pgwarden ctl -c SOURCE.yaml logical publish` it first") from None
        lacking = pglogical.without_identity(tables)
        if lacking and args.replica_identity != "full":
            raise CliError(
                f"source table {lacking[0]} has no primary key or replica identity: UPDATE and "
                f"DELETE of its rows could not be applied here; add a primary key on the source, "
                f"or pass --replica-identity full")
        if not spec.copy_schema:
            for t in tables:
                schema, name = t.name.split(".")
                q = Q.Identifier(schema, name).as_string(conn)
                if conn.execute("SELECT to_regclass(%s)", (q,)).fetchone() == (None,):
                    raise CliError(f"table {t.name} does not exist here; create it or pass --copy-schema")
    update_settings(ctx.store, lambda s: replace(s, subscriptions=(*s.subscriptions, spec)))
    mark = L.digest(spec)
    if not wait_applied(ctx, lambda h: h.subscriptions.get(spec.name) == mark, "subscription"):
        raise take_back(ctx, spec.name, not_applied("subscription", spec.name))
    print(f"subscription {spec.name} created: {', '.join(spec.publications)} from {redact(spec.source)}"
          + ("" if spec.copy_data else " (no initial copy)"))
    return 0


# -- refresh -----------------------------------------------------------------------------------


def cmd_refresh(args: argparse.Namespace, ctx: Ctx) -> int:
    """ALTER SUBSCRIPTION ... REFRESH PUBLICATION: tables added to the source's publications
    (a table created later in an --all-tables one, say) are copied and then streamed."""
    spec = next((x for x in ctx.snapshot().settings.subscriptions if x.name == args.name), None)
    if spec is None:
        raise CliError(f"no subscription named {args.name} is declared in cluster {ctx.cfg.cluster}; "
                       f"`logical status` lists them")
    with primary_conn(ctx) as conn:
        made: list[str] = []
        if args.copy_schema:
            try:
                with pglogical.source_connect(spec.source, PG_TIMEOUT) as src:
                    tables = pglogical.published_tables(src, spec.publications)
            except (psycopg.Error, ValueError) as e:
                raise CliError(f"cannot read the source {redact(spec.source)}: {first_line(e)}") from None
            made = pglogical.create_tables(conn, tables)
        try:
            conn.execute(Q.SQL("ALTER SUBSCRIPTION {} REFRESH PUBLICATION WITH (copy_data = {})").format(
                Q.Identifier(spec.name), Q.SQL("true" if spec.copy_data else "false")))
        except psycopg.Error as e:
            hint = "" if args.copy_schema else " (new tables missing here? add --copy-schema)"
            raise CliError(f"subscription {spec.name}: {first_line(e)}{hint}") from None
    print(f"subscription {spec.name} refreshed" + (f"; created {', '.join(made)}" if made else ""))
    return 0


# -- drop --------------------------------------------------------------------------------------


def cmd_drop(args: argparse.Namespace, ctx: Ctx) -> int:
    name: str = args.name
    kind = declared(ctx.snapshot().settings, name)
    if kind is None:
        raise CliError(f"no publication or subscription named {name} is declared in cluster "
                       f"{ctx.cfg.cluster}; `logical status` lists them")
    update_settings(ctx.store, lambda s: replace(
        s, publications=tuple(p for p in s.publications if p.name != name),
        subscriptions=tuple(x for x in s.subscriptions if x.name != name)))
    # Drop it now rather than wait for the leader's loop, so a failure is reported here.
    with primary_conn(ctx) as conn:
        try:
            if kind == "subscription":
                pglogical.drop_subscription(conn, name)
            else:
                conn.execute(Q.SQL("DROP PUBLICATION IF EXISTS {}").format(Q.Identifier(name)))
        except psycopg.Error as e:
            # The leader drops what is no longer declared too, maybe at this very moment ("tuple
            # concurrently deleted"): what matters is that it is gone, whoever dropped it.
            if not _gone(ctx, kind, name, DROP_WAIT):
                raise CliError(
                    f"{kind} {name} is no longer declared but could not be dropped yet: {first_line(e)}; "
                    f"the leader keeps trying") from None
    print(f"{kind} {name} dropped" + (" with its slot on the source" if kind == "subscription" else ""))
    return 0


def _gone(ctx: Ctx, kind: str, name: str, timeout: float) -> bool:
    """True once the primary has no `kind` named `name` (within `timeout` seconds)."""
    sub = kind == "subscription"
    table, column = ("pg_subscription", "subname") if sub else ("pg_publication", "pubname")
    query = Q.SQL("SELECT count(*) FROM {} WHERE {} = %s").format(Q.Identifier(table), Q.Identifier(column))
    deadline = time.monotonic() + timeout
    while True:
        try:
            with primary_conn(ctx) as conn:
                row = conn.execute(query, (name,)).fetchone()
            if row is not None and int(row[0]) == 0:
                return True
        except (psycopg.Error, CliError):
            pass
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)


__all__ = ["register"]
