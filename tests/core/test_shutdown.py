"""A stopping agent hands over its lease only if its PostgreSQL stopped (core/shutdown.py)."""

from __future__ import annotations

from pgwarden.core.actions import ReleaseLease
from pgwarden.core.shutdown import after_stop


def test_a_leader_whose_postgres_stopped_releases_the_key() -> None:
    assert after_stop(True, True).actions == (ReleaseLease(),)


def test_a_leader_whose_postgres_may_still_write_keeps_the_key_to_expire() -> None:
    d = after_stop(True, False)
    assert d.actions == () and "keeping the leader key" in d.message


def test_a_replica_has_nothing_to_release() -> None:
    assert after_stop(False, True).actions == () and after_stop(False, False).actions == ()
