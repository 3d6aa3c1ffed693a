"""`pgwarden ctl -c FILE logical status`: the declared publications and subscriptions, as this
cluster's primary and each subscription's source show them: state (copying with per-table
progress, streaming, lagging, error), lag, the slot on the source and whether every standby of
the source (its failover candidates) holds a copy of it."""

from __future__ import annotations

import argparse
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgwarden.cli.ctl_context import Ctx, superuser_credentials
from pgwarden.cli.output import CliError, console, print_json
from pgwarden.postgres import sql
from pgwarden.report import redact

PG_TIMEOUT = 5.0
LAGGING_BYTES = 16 * 1024 * 1024
LAGGING_SECONDS = 10.0
_TABLE_STATES = {"i": "initializing", "d": "copying", "f": "copied", "s": "synchronized", "r": "ready"}


def primary_conn(ctx: Ctx) -> psycopg.Connection[Any]:
    """A superuser connection to the cluster's primary (the leader's PostgreSQL)."""
    view = ctx.snapshot()
    leader = view.members.get(view.leader.name) if view.leader else None
    if leader is None:
        raise CliError(f"cluster {ctx.cfg.cluster} has no leader right now; "
                       f"try again when `ctl list` shows one")
    user, password = superuser_credentials(ctx.cfg)
    try:
        return sql.connect(sql.ConnParams(leader.host, leader.port, user, password), PG_TIMEOUT)
    except psycopg.Error as e:
        raise CliError(f"cannot connect to the primary {leader.name} at {leader.host}:{leader.port}: "
                       f"{first_line(e)}") from None


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def source_hosts(dsn: str) -> list[tuple[str, str]]:
    """Each (host, port) of a possibly multi-host libpq string."""
    d = conninfo_to_dict(dsn)
    hosts = str(d.get("host") or "localhost").split(",")
    ports = str(d.get("port") or "5432").split(",")
    if len(ports) == 1:
        ports = ports * len(hosts)
    return list(zip(hosts, ports, strict=False))


def _one_host(dsn: str, host: str, port: str, timeout: float) -> psycopg.Connection[Any]:
    d: dict[str, Any] = dict(conninfo_to_dict(dsn))
    d.update(host=host, port=port, target_session_attrs="any", connect_timeout=str(max(2, int(timeout))))
    d.pop("hostaddr", None)
    return psycopg.connect(make_conninfo(**d), autocommit=True)


def slot_copies(dsn: str, slot: str | None, timeout: float) -> list[dict[str, Any]]:
    """Each host of the source: its role and whether it holds `slot` (and how far it is)."""
    out: list[dict[str, Any]] = []
    for host, port in source_hosts(dsn):
        row: dict[str, Any] = {"host": f"{host}:{port}", "role": None, "has_slot": False,
                               "confirmed_flush_lsn": None}
        try:
            with _one_host(dsn, host, port, timeout) as c:
                rec = c.execute("SELECT pg_is_in_recovery()").fetchone()
                row["role"] = "standby" if rec and rec[0] else "primary"
                if slot:
                    # A 17+ slot being synchronised stays temporary (and is dropped at promotion)
                    # until the standby can hold it safely: not a copy yet.
                    r = c.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots "
                                  "WHERE slot_name = %s AND NOT temporary", (slot,)).fetchone()
                    row["has_slot"] = r is not None
                    row["confirmed_flush_lsn"] = r[0] if r else None
        except psycopg.Error as e:
            row["error"] = str(e).strip().splitlines()[0] if str(e).strip() else "unreachable"
        out.append(row)
    return out


def _source_lag(dsn: str, name: str, slot: str | None, timeout: float) -> tuple[int | None, float | None]:
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=max(2, int(timeout))) as c:
            r = c.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint "
                          "FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone()
            t = c.execute("SELECT extract(epoch FROM coalesce(replay_lag, interval '0'))::float8 "
                          "FROM pg_stat_replication WHERE application_name = %s", (name,)).fetchone()
            return (int(r[0]) if r and r[0] is not None else None,
                    float(t[0]) if t and t[0] is not None else None)
    except psycopg.Error:
        return None, None


def subscription_rows(conn: psycopg.Connection[Any], timeout: float) -> list[dict[str, Any]]:
    subs = conn.execute(
        "SELECT s.oid, s.subname, s.subslotname, s.subenabled, s.subconninfo, st.pid, "
        "obj_description(s.oid, 'pg_subscription'), array_to_string(s.subpublications, ','), "
        "ss.apply_error_count, ss.sync_error_count "
        "FROM pg_subscription s LEFT JOIN pg_stat_subscription st ON st.subid = s.oid AND st.relid IS NULL "
        "LEFT JOIN pg_stat_subscription_stats ss ON ss.subid = s.oid "
        "WHERE s.subdbid = (SELECT oid FROM pg_database WHERE datname = current_database()) "
        "ORDER BY s.subname").fetchall()
    out: list[dict[str, Any]] = []
    for oid, name, slot, enabled, dsn, pid, comment, pubs, apply_err, sync_err in subs:
        tables = [{"name": str(t), "state": _TABLE_STATES.get(str(st), str(st))} for t, st in conn.execute(
            "SELECT srrelid::regclass::text, srsubstate FROM pg_subscription_rel WHERE srsubid = %s "
            "ORDER BY 1", (oid,)).fetchall()]
        lag_bytes, lag_seconds = _source_lag(dsn, name, slot, timeout)
        copies = slot_copies(dsn, slot, timeout)
        standbys = [c for c in copies if c["role"] != "primary"]
        error = None
        if not enabled:
            state = "disabled"
        elif pid is None:
            state = "error"
            error = last_error(conn, name) or (
                f"the apply worker is not running (apply errors {apply_err or 0}, sync errors "
                f"{sync_err or 0}); see the subscriber primary's server log")
        elif any(t["state"] != "ready" for t in tables):
            state = "copying"
        elif (lag_bytes or 0) > LAGGING_BYTES or (lag_seconds or 0) > LAGGING_SECONDS:
            state = "lagging"
        else:
            state = "streaming"
        out.append({
            "name": name, "managed": bool(comment and str(comment).startswith("pgwarden:")),
            "source": redact(dsn), "publications": pubs.split(",") if pubs else [], "state": state,
            "tables": tables, "lag_bytes": lag_bytes, "lag_seconds": lag_seconds, "source_slot": slot,
            "slot_on_candidates": bool(standbys) and all(c["has_slot"] for c in standbys),
            "candidates": copies, "error": error,
        })
    return out


LOG_TAIL = 65536


def last_error(conn: psycopg.Connection[Any], name: str) -> str | None:
    """PostgreSQL's last error for subscription `name`, from the tail of the server log pgwarden
    keeps beside the data directory (`<data_dir>.log`); None when it cannot be read."""
    try:
        row = conn.execute(
            "WITH f AS (SELECT current_setting('data_directory') || '.log' AS path) "
            "SELECT pg_read_file(path, greatest(0, (pg_stat_file(path)).size - %s), %s) FROM f",
            (LOG_TAIL, LOG_TAIL)).fetchone()
    except psycopg.Error:
        return None
    return error_for(str(row[0]) if row and row[0] else "", name)


def error_for(log_text: str, name: str) -> str | None:
    """The last ERROR line that follows a line naming subscription `name` (its apply worker)."""
    ours, found = False, None
    for line in log_text.splitlines():
        if f'subscription "{name}"' in line:
            ours = True
        elif "subscription \"" in line:
            ours = False
        if ours and "ERROR:" in line:
            found = line.split("ERROR:", 1)[1].strip()
    return found


def publication_rows(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    pubs = conn.execute(
        "SELECT p.pubname, p.puballtables, obj_description(p.oid, 'pg_publication') FROM pg_publication p "
        "ORDER BY 1").fetchall()
    out: list[dict[str, Any]] = []
    for name, all_tables, comment in pubs:
        rows = conn.execute(
            "SELECT schemaname || '.' || tablename, array_to_string(attnames, ','), rowfilter "
            "FROM pg_publication_tables WHERE pubname = %s ORDER BY 1", (name,)).fetchall()
        slots = conn.execute(
            "SELECT slot_name, active FROM pg_replication_slots WHERE slot_type = 'logical' "
            "AND database = current_database() ORDER BY 1").fetchall()
        out.append({
            "name": name, "all_tables": bool(all_tables),
            "managed": bool(comment and str(comment).startswith("pgwarden:")),
            "tables": [{"name": t, "columns": c.split(",") if c else None, "where": w} for t, c, w in rows],
            "slots": [{"name": s, "active": bool(a)} for s, a in slots],
        })
    return out


def cmd_status(args: argparse.Namespace, ctx: Ctx) -> int:
    with primary_conn(ctx) as conn:
        data = {"publications": publication_rows(conn), "subscriptions": subscription_rows(conn, PG_TIMEOUT)}
    if args.format == "json":
        print_json(data)
        return 0
    con = console()
    if not data["publications"] and not data["subscriptions"]:
        print(f"cluster {ctx.cfg.cluster}: no publications or subscriptions")
        return 0
    for p in data["publications"]:
        what = "all tables" if p["all_tables"] else ", ".join(t["name"] for t in p["tables"])
        con.print(f"publication [bold]{p['name']}[/bold]: {what}")
    for s in data["subscriptions"]:
        lag = "" if s["lag_bytes"] is None else f", lag {s['lag_bytes']} bytes"
        if s["lag_seconds"] is not None:
            lag += f" / {s['lag_seconds']:.1f} s"
        con.print(f"subscription [bold]{s['name']}[/bold]: {s['state']}{lag}; slot {s['source_slot']} "
                  f"on every source standby: {'yes' if s['slot_on_candidates'] else 'NO'}")
        for t in s["tables"]:
            if t["state"] != "ready":
                con.print(f"  {t['name']}: {t['state']}")
        if s["error"]:
            con.print(f"  error: {s['error']}")
    return 0
