"""What an online upgrade by logical replication cannot move, as a precise list (pure: the facts
are gathered by inspect.py). A refused run changes nothing."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Facts:
    """What inspect.py reads from the old cluster's primary and the new binaries."""

    wal_level: str
    no_key: tuple[str, ...] = ()  # tables without a primary key or usable replica identity
    unlogged: tuple[str, ...] = ()
    large_objects: int = 0
    extensions: tuple[str, ...] = ()  # installed on the old primary (plpgsql left out)
    available: frozenset[str] = field(default_factory=frozenset)  # on the new binaries
    other_databases: tuple[str, ...] = ()  # besides postgres, not templates
    has_pgbouncer: bool = True
    old_major: int = 0
    new_major: int = 0
    database_bytes: int = 0  # the postgres database on the old primary
    free_bytes: int | None = None  # free space where the new cluster goes (None: unknown)
    nodes: int = 1  # of the new cluster: each holds a copy
    node_file: str | None = None  # `upgrade --from`: the old node file (named in the fixes)


# A new copy needs the data plus room for WAL and the initial copy's churn.
DISK_FACTOR = 1.5


@dataclass(frozen=True)
class Problem:
    what: str  # one line: what is wrong
    fix: str  # one line: how to fix it


def _names(items: Iterable[str]) -> str:
    return ", ".join(sorted(items))


def _mb(n: int) -> str:
    return f"{n / 1048576:.0f} MB"


def problems(f: Facts) -> list[Problem]:
    out: list[Problem] = []
    if f.new_major and f.old_major and f.new_major <= f.old_major:
        out.append(Problem(f"the new binaries are PostgreSQL {f.new_major}, not newer than the "
                           f"cluster's {f.old_major}", "pass --bin-dir of a newer major version"))
    if not f.has_pgbouncer:
        out.append(Problem("the cluster has no PgBouncer, through which clients are moved",
                           "create the cluster with `pgwarden local up --pgbouncer`"
                           if f.node_file is None else
                           f"put PgBouncer in front of it: a pgbouncer: section in {f.node_file}"))
    if f.wal_level != "logical":
        out.append(Problem(f"wal_level is {f.wal_level}; publishing the tables needs logical",
                           f"`pgwarden ctl -c {f.node_file or 'DIR/node1/pgwarden.yaml'} edit-config "
                           f"--set parameters.wal_level=logical`, then restart the members"))
    if f.no_key:
        out.append(Problem(f"tables without a primary key or replica identity: {_names(f.no_key)}",
                           "add a primary key, or ALTER TABLE ... REPLICA IDENTITY FULL"))
    if f.unlogged:
        out.append(Problem(f"unlogged tables (not replicated): {_names(f.unlogged)}",
                           "ALTER TABLE ... SET LOGGED, or drop them"))
    if f.large_objects:
        out.append(Problem(f"{f.large_objects} large object(s) (not replicated)",
                           "move them into bytea columns, or lo_unlink them"))
    missing = [e for e in f.extensions if e not in f.available]
    if missing:
        out.append(Problem(f"extensions missing on the new binaries: {_names(missing)}",
                           "install them for the new major version"))
    need = int(f.database_bytes * f.nodes * DISK_FACTOR)
    if f.free_bytes is not None and need > f.free_bytes:
        out.append(Problem(f"not enough disk: {f.nodes} copies of {_mb(f.database_bytes)} need about "
                           f"{_mb(need)}, {_mb(f.free_bytes)} free",
                           "free space under --dir, or fewer --nodes"))
    if f.other_databases:
        out.append(Problem(f"databases besides postgres: {_names(f.other_databases)} "
                           f"(this upgrade moves the postgres database only)",
                           "move or drop them first"))
    return out


@dataclass(frozen=True)
class Target:
    """`upgrade --from --to`: what inspect.py reads about the new cluster the operator runs, and
    about the PgBouncer both clusters' node files must name."""

    old_cluster: str
    new_cluster: str
    to_file: str
    old_major: int
    new_major: int
    user_tables: tuple[str, ...] = ()
    wal_level: str = "logical"
    same_superuser: bool = True  # clients log in through PgBouncer with the old one's password
    pgbouncer: str = "same"  # the new node file's pgbouncer: section: same | none | other
    owner: str | None = None  # pgbouncer.ini's owner line
    dump_major: int | None = None  # pg_dump found on this host (None: none)
    dump_dir: str = ""


def target_problems(t: Target) -> list[Problem]:
    out: list[Problem] = []
    if t.new_cluster == t.old_cluster:
        out.append(Problem(f"both node files name the cluster {t.old_cluster}",
                           f"give the new cluster its own name (cluster: in {t.to_file})"))
    if t.new_major <= t.old_major:
        out.append(Problem(f"the new cluster runs PostgreSQL {t.new_major}, not newer than the old "
                           f"one's {t.old_major}", "bring the new cluster up on a newer major version"))
    if t.user_tables:
        shown = _names(t.user_tables[:5]) + (", ..." if len(t.user_tables) > 5 else "")
        out.append(Problem(f"the new cluster is not empty: {len(t.user_tables)} user table(s) "
                           f"({shown})", "bring up an empty new cluster, or drop them there"))
    if t.wal_level != "logical":
        out.append(Problem(f"the new cluster's wal_level is {t.wal_level}; the reverse replication "
                           f"(kept until --finish) needs logical",
                           f"`pgwarden ctl -c {t.to_file} edit-config --set "
                           f"parameters.wal_level=logical`, then restart its members"))
    if not t.same_superuser:
        out.append(Problem("the new cluster's superuser name or password differs from the old one's "
                           "(clients log in through PgBouncer with the old one's)",
                           f"use the old node file's postgresql.superuser in {t.to_file}"))
    if t.pgbouncer != "same":
        out.append(Problem("the new node file " + ("has no pgbouncer: section" if t.pgbouncer == "none"
                                                   else "names another PgBouncer than the old one's")
                           + " (its leader keeps PgBouncer on its primary after the cutover)",
                           f"copy the old node file's pgbouncer: section into {t.to_file} and restart "
                           f"the new cluster's agents"))
    elif t.owner != t.old_cluster:
        out.append(Problem(f"pgbouncer.ini's owner line names {t.owner or 'no cluster'}, so the new "
                           f"cluster's leader may send clients to it before the cutover",
                           f"put `;; pgwarden-owner: {t.old_cluster}` as the first line of "
                           f"pgbouncer.ini (before starting the new cluster's agents)"))
    if t.dump_major != t.new_major:
        found = f"PostgreSQL {t.dump_major}'s" if t.dump_major else "no"
        out.append(Problem(f"the schema is copied with PostgreSQL {t.new_major}'s pg_dump; {found} "
                           f"binaries found on this host{f' ({t.dump_dir})' if t.dump_dir else ''}",
                           f"install PostgreSQL {t.new_major}'s client binaries here, or set "
                           f"postgresql.bin_dir in {t.to_file}"))
    return out


def format_refusal(found: list[Problem]) -> str:
    """The message of a refused run: one line per problem, each with its fix."""
    lines = [f"cannot upgrade online ({len(found)} problem{'s' if len(found) != 1 else ''}; "
             f"nothing was changed):"]
    lines += [f"  - {p.what}: {p.fix}" for p in found]
    return "\n".join(lines)
