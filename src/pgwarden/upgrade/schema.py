"""Copy roles and schema from the old primary to the new one with the NEW binaries' pg_dumpall
and pg_dump (a newer pg_dump reads an older server; not the other way round). The schema is
restored in one transaction, so a killed restore leaves nothing and is simply redone."""

from __future__ import annotations

import re
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


def _quoted(role: str) -> str:
    """How pg_dumpall names a role (quoted unless a plain lower-case identifier)."""
    return role if re.fullmatch(r"[a-z_][a-z0-9_$]*", role) else '"' + role.replace('"', '""') + '"'


def without_roles(dump: str, roles: set[str]) -> str:
    """The roles dump without the CREATE/ALTER ROLE lines of `roles` (those the new cluster has
    already): its own superuser and replication user keep their passwords, which its agents and
    standbys log in with."""
    heads = tuple(f"{verb} ROLE {_quoted(r)}{end}" for r in roles for verb, end in
                  (("CREATE", ";"), ("ALTER", " ")))
    return "".join(line for line in dump.splitlines(keepends=True) if not line.startswith(heads))


def copy(bin_dir: Path, old_dsn: str, new_dsn: str, new_conn: R.Conn) -> bool:
    """Roles, then the postgres database's schema. False when the schema was there already
    (a rerun after the restore committed)."""
    if has_user_tables(new_conn):
        return False
    roles = _run([str(bin_dir / "pg_dumpall"), "--roles-only", "-d", old_dsn])
    existing = {str(r[0]) for r in new_conn.execute("SELECT rolname FROM pg_roles").fetchall()}
    roles = without_roles(roles, existing)
    # Roles the new cluster has already are left as they are; the others are created. Errors
    # (a membership granted by a role missing here, say) are expected: no ON_ERROR_STOP here.
    _run([str(bin_dir / "psql"), "-X", "-q", "-d", new_dsn, "-v", "ON_ERROR_STOP=0"], roles)
    dump = _run([str(bin_dir / "pg_dump"), "--schema-only", "--no-publications", "--no-subscriptions",
                 "-d", old_dsn])
    _run([str(bin_dir / "psql"), "-X", "-q", "-d", new_dsn, "--single-transaction",
          "-v", "ON_ERROR_STOP=1"], dump)
    return True
