"""`pgwarden upgrade --from --to`: what it refuses about the new cluster the operator runs (pure),
and the roles copy leaving the new cluster's own roles alone."""

from __future__ import annotations

from pgwarden.upgrade.checks import Facts, Target, format_refusal, problems, target_problems
from pgwarden.upgrade.schema import without_roles

OK = Target(old_cluster="main", new_cluster="main18", to_file="/etc/pgwarden/new.yaml", old_major=15,
            new_major=18, owner="main", dump_major=18, dump_dir="/usr/lib/postgresql/18/bin")


def test_nothing_in_the_way() -> None:
    assert target_problems(OK) == []


def test_every_problem_of_the_new_cluster_is_listed_with_its_fix() -> None:
    bad = Target(old_cluster="main", new_cluster="main", to_file="/n.yaml", old_major=15, new_major=15,
                 user_tables=tuple(f"public.t{i}" for i in range(7)), wal_level="replica",
                 same_superuser=False, pgbouncer="none", owner=None, dump_major=17, dump_dir="/b")
    found = target_problems(bad)
    text = format_refusal(found)
    assert text.splitlines()[0] == "cannot upgrade online (7 problems; nothing was changed):"
    for needle in ("both node files name the cluster main", "runs PostgreSQL 15, not newer",
                   "not empty: 7 user table(s) (public.t0, public.t1, public.t2, public.t3, public.t4, ...)",
                   "wal_level is replica", "superuser name or password differs",
                   "has no pgbouncer: section", "PostgreSQL 17's binaries found on this host (/b)"):
        assert sum(needle in line for line in text.splitlines()) == 1, needle
    assert all(p.fix for p in found)
    assert all("/n.yaml" in p.fix for p in found if "pgbouncer" in p.what or "wal_level" in p.what)


def test_pgbouncer_must_stay_with_the_old_cluster_until_the_cutover() -> None:
    for owner in (None, "main18"):
        found = target_problems(Target(**{**OK.__dict__, "owner": owner}))
        assert len(found) == 1 and "`;; pgwarden-owner: main`" in found[0].fix
    other = target_problems(Target(**{**OK.__dict__, "pgbouncer": "other"}))
    assert len(other) == 1 and "another PgBouncer" in other[0].what


def test_the_old_node_file_is_named_in_the_fixes() -> None:
    found = problems(Facts(wal_level="replica", has_pgbouncer=False, node_file="/etc/old.yaml"))
    assert [p.fix for p in found] == [
        "put PgBouncer in front of it: a pgbouncer: section in /etc/old.yaml",
        "`pgwarden ctl -c /etc/old.yaml edit-config --set parameters.wal_level=logical`, "
        "then restart the members"]


def test_roles_the_new_cluster_has_keep_their_passwords() -> None:
    dump = ("CREATE ROLE app;\nALTER ROLE app WITH LOGIN PASSWORD 'x';\n"
            "CREATE ROLE replicator;\nALTER ROLE replicator WITH REPLICATION PASSWORD 'old';\n"
            "CREATE ROLE \"Mixed\";\nALTER ROLE \"Mixed\" WITH LOGIN;\n"
            "CREATE ROLE replicator2;\nGRANT pg_monitor TO replicator;\n")
    assert without_roles(dump, {"replicator", "Mixed"}) == (
        "CREATE ROLE app;\nALTER ROLE app WITH LOGIN PASSWORD 'x';\n"
        "CREATE ROLE replicator2;\nGRANT pg_monitor TO replicator;\n")
