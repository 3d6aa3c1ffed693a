"""Copy roles and schema from the old primary to the new one with the NEW binaries' pg_dumpall
and pg_dump (a newer pg_dump reads an older server; not the other way round). The schema is
restored in one transaction, so a killed restore leaves nothing and is simply redone."""

from __future__ import annotations

import subprocess
from pathlib import Path

from pgwarden.errors import CliError
from pgwarden.upgrade import replicate as R

TIMEOUT = 600.0


def _run(argv: list[str], stdin: str | None = None) -> str:
    res = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    if res.returncode != 0:
        raise CliError(f"{Path(argv[0]).name} failed ({res.returncode}): {res.stderr.strip()[-800:]}")
    return res.stdout


def has_user_tables(conn: R.Conn) -> bool:
    row = conn.execute("SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                       "WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', "
                       "'information_schema') AND n.nspname NOT LIKE 'pg_toast%'").fetchone()
    return row is not None and int(row[0]) > 0


def copy(bin_dir: Path, old_dsn: str, new_dsn: str, new_conn: R.Conn) -> bool:
    """Roles, then the postgres database's schema. False when the schema was there already
    (a rerun after the restore committed)."""
    if has_user_tables(new_conn):
        return False
    roles = _run([str(bin_dir / "pg_dumpall"), "--roles-only", "-d", old_dsn])
    # The superuser and the replication user exist already (same passwords); other roles are
    # created. Errors for roles that exist already are expected, so no ON_ERROR_STOP here.
    _run([str(bin_dir / "psql"), "-X", "-q", "-d", new_dsn, "-v", "ON_ERROR_STOP=0"], roles)
    dump = _run([str(bin_dir / "pg_dump"), "--schema-only", "--no-publications", "--no-subscriptions",
                 "-d", old_dsn])
    _run([str(bin_dir / "psql"), "-X", "-q", "-d", new_dsn, "--single-transaction",
          "-v", "ON_ERROR_STOP=1"], dump)
    return True
