"""The one line saying why PostgreSQL refused to start, picked from its log's tail."""

from __future__ import annotations

from pgwarden.postgres.startlog import startup_failure

EARLIER = """\
2026-12-04 16:51:20.409 GMT [26849] LOG:  database system is ready to accept connections
2026-12-04 16:51:20.487 GMT [26849] LOG:  received fast shutdown request
2026-12-04 16:51:20.550 GMT [26849] LOG:  database system is shut down
"""


def test_a_bad_parameter_gives_the_cause_and_the_fatal_line() -> None:
    tail = EARLIER + (
        '2026-12-04 16:51:20.700 GMT [26876] LOG:  invalid value for parameter "max_connections": "lots"\n'
        '2026-12-04 16:51:20.700 GMT [26876] FATAL:  configuration file "/d/postgresql.conf" '
        'contains errors\n')
    assert startup_failure(tail) == ('invalid value for parameter "max_connections": "lots"; '
                                     'FATAL: configuration file "/d/postgresql.conf" contains errors')


def test_hints_after_the_fatal_line_are_kept_and_other_processes_left_out() -> None:
    tail = EARLIER + (
        "2026-12-04 16:51:21.000 GMT [7] LOG:  starting PostgreSQL 18\n"
        "2026-12-04 16:51:21.001 GMT [7] FATAL:  could not create lock file \"/run/x/.s.PGSQL.5432.lock\": "
        "Permission denied\n"
        "2026-12-04 16:51:21.001 GMT [7] HINT:  Is another postmaster running?\n"
        "2026-12-04 16:51:21.002 GMT [7] LOG:  database system is shut down\n")
    assert startup_failure(tail) == ("starting PostgreSQL 18; FATAL: could not create lock file "
                                     "\"/run/x/.s.PGSQL.5432.lock\": Permission denied; "
                                     "HINT: Is another postmaster running?")


def test_a_log_without_a_prefix_still_gives_the_fatal_line() -> None:
    assert startup_failure("FATAL:  data directory \"/d\" has invalid permissions\n") == (
        'FATAL: data directory "/d" has invalid permissions')


def test_no_fatal_line_no_reason() -> None:
    assert startup_failure(EARLIER) is None
    assert startup_failure("") is None
