"""Pure parts of `ctl logical status` (cli/logical_status.py): the error a subscription's apply
worker last logged, passwords masked, the hosts of a multi-host source."""

from __future__ import annotations

from pgwarden.cli.logical_status import error_for, source_hosts
from pgwarden.report import redact

LOG = """\
2026-12-04 17:04:04.400 GMT [1] LOG:  logical replication apply worker for subscription "a" has started
2026-12-04 17:04:04.433 GMT [1] ERROR:  could not start WAL streaming: slot "a" does not exist
2026-12-04 17:04:05.356 GMT [2] LOG:  logical replication apply worker for subscription "b" has started
2026-12-04 17:04:05.406 GMT [2] ERROR:  duplicate key value violates unique constraint "t_pkey"
"""


def test_the_last_error_of_each_subscription_is_found_in_the_log() -> None:
    assert error_for(LOG, "a") == 'could not start WAL streaming: slot "a" does not exist'
    assert error_for(LOG, "b") == 'duplicate key value violates unique constraint "t_pkey"'
    assert error_for(LOG, "c") is None


def test_passwords_are_masked_and_hosts_split() -> None:
    dsn = "postgresql://u:secret@h1:5432,h2:5433/postgres?target_session_attrs=read-write"
    assert "secret" not in redact(dsn) and "password=***" in redact(dsn)
    assert redact("host=a password=x'y") != ""
    assert source_hosts(dsn) == [("h1", "5432"), ("h2", "5433")]
    assert source_hosts("host=a,b port=6000") == [("a", "6000"), ("b", "6000")]
