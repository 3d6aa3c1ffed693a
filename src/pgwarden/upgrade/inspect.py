"""Reads the facts checks.py judges: from the old cluster's primary, the new binaries and (for
`upgrade --from --to`) the new cluster's primary."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import psycopg

from pgwarden.upgrade.checks import Facts

_USER_TABLES = ("c.relnamespace = n.oid AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
                "AND n.nspname NOT LIKE 'pg_toast%'")

NO_KEY = f"""
SELECT n.nspname || '.' || c.relname FROM pg_class c, pg_namespace n
WHERE {_USER_TABLES} AND c.relkind = 'r' AND c.relpersistence = 'p'
  AND (c.relreplident = 'n' OR (c.relreplident = 'd' AND NOT EXISTS (
       SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)))
ORDER BY 1"""

UNLOGGED = f"""
SELECT n.nspname || '.' || c.relname FROM pg_class c, pg_namespace n
WHERE {_USER_TABLES} AND c.relkind IN ('r', 'p') AND c.relpersistence = 'u' ORDER BY 1"""


def _column(conn: psycopg.Connection[Any], sql: str) -> tuple[str, ...]:
    return tuple(str(r[0]) for r in conn.execute(sql).fetchall())


def share_dir(bin_dir: Path) -> Path:
    """The installation's share directory (extension control files live in its extension/)."""
    pg_config = bin_dir / "pg_config"
    if pg_config.is_file():
        res = subprocess.run([str(pg_config), "--sharedir"], capture_output=True, text=True,
                             timeout=10, check=False)
        if res.returncode == 0 and res.stdout.strip():
            return Path(res.stdout.strip())
    for cand in (bin_dir.parent / "share" / "postgresql", bin_dir.parent / "share"):
        if (cand / "extension").is_dir():
            return cand
    return bin_dir.parent / "share"


def available_extensions(bin_dir: Path) -> frozenset[str]:
    ext = share_dir(bin_dir) / "extension"
    return frozenset(p.name.removesuffix(".control") for p in ext.glob("*.control"))


def gather(conn: psycopg.Connection[Any], available: frozenset[str], new_major: int,
           has_pgbouncer: bool, free_bytes: int | None, nodes: int, node_file: str | None = None) -> Facts:
    row = conn.execute("SELECT current_setting('wal_level'), current_setting('server_version_num')::int, "
                       "(SELECT count(*) FROM pg_largeobject_metadata), "
                       "pg_database_size(current_database())").fetchone()
    assert row is not None
    return Facts(
        database_bytes=int(row[3]), free_bytes=free_bytes, nodes=nodes, node_file=node_file,
        wal_level=str(row[0]), old_major=int(row[1]) // 10000, large_objects=int(row[2]),
        no_key=_column(conn, NO_KEY), unlogged=_column(conn, UNLOGGED),
        extensions=_column(conn, "SELECT extname FROM pg_extension WHERE extname <> 'plpgsql' ORDER BY 1"),
        available=available,
        other_databases=_column(conn, "SELECT datname FROM pg_database WHERE NOT datistemplate "
                                      "AND datname <> 'postgres' ORDER BY 1"),
        has_pgbouncer=has_pgbouncer, new_major=new_major,
    )


def user_tables(conn: psycopg.Connection[Any]) -> tuple[str, ...]:
    return _column(conn, f"SELECT n.nspname || '.' || c.relname FROM pg_class c, pg_namespace n "
                         f"WHERE {_USER_TABLES} AND c.relkind IN ('r', 'p') ORDER BY 1")


def server_extensions(conn: psycopg.Connection[Any]) -> frozenset[str]:
    """What a running server can install (the new cluster's, read where it runs)."""
    return frozenset(_column(conn, "SELECT name FROM pg_available_extensions"))
