"""What an online upgrade refuses, and the one message listing all of it."""

from __future__ import annotations

from pgwarden.core.settings import ClusterSettings, SyncMode
from pgwarden.local.layout import seed_settings
from pgwarden.upgrade.checks import Facts, Problem, format_refusal, problems
from pgwarden.upgrade.newcluster import assignments

OK = Facts(wal_level="logical", extensions=("pgcrypto",), available=frozenset({"pgcrypto"}),
           old_major=15, new_major=18)


def test_nothing_in_the_way() -> None:
    assert problems(OK) == []


def test_every_problem_is_listed_with_its_fix() -> None:
    bad = Facts(wal_level="replica", no_key=("public.b", "public.a"), unlogged=("public.u",),
                large_objects=2, extensions=("pgcrypto", "postgis"), available=frozenset({"pgcrypto"}),
                other_databases=("app",), has_pgbouncer=False, old_major=15, new_major=15,
                database_bytes=100 * 2**20, free_bytes=200 * 2**20, nodes=3)
    found = problems(bad)
    text = format_refusal(found)
    assert text.splitlines()[0] == "cannot upgrade online (9 problems; nothing was changed):"
    for needle in ("PostgreSQL 15, not newer", "no PgBouncer", "wal_level is replica",
                   "without a primary key or replica identity: public.a, public.b",
                   "unlogged tables (not replicated): public.u", "2 large object(s)",
                   "extensions missing on the new binaries: postgis", "databases besides postgres: app",
                   "not enough disk: 3 copies of 100 MB need about 450 MB, 200 MB free"):
        assert sum(needle in line for line in text.splitlines()) == 1, needle
    assert all(p.fix for p in found)


def test_disk_is_enough_or_unknown() -> None:
    assert problems(Facts(wal_level="logical", database_bytes=2**20, free_bytes=3 * 2**20, nodes=2)) == []
    assert problems(Facts(wal_level="logical", database_bytes=2**40, free_bytes=None, nodes=3)) == []


def test_a_single_problem_reads_as_one() -> None:
    assert format_refusal([Problem("x", "y")]) == \
        "cannot upgrade online (1 problem; nothing was changed):\n  - x: y"


def test_the_new_cluster_takes_the_old_settings_and_publishes() -> None:
    s = ClusterSettings(ttl=10, loop_wait=2, synchronous_mode=SyncMode.ON,
                        parameters={"max_connections": 200, "wal_level": "replica"})
    got = assignments(s)
    assert not any(a.startswith(("retry_timeout", "paused")) for a in got)  # defaults, not-copied
    seeded = seed_settings(None, got)  # what `local up` makes of them
    assert (seeded.ttl, seeded.loop_wait, seeded.synchronous_mode) == (10, 2, SyncMode.ON)
    assert seeded.parameters == {"max_connections": "200", "wal_level": "logical"}
