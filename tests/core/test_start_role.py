"""A standby becomes a primary only by promotion (safety review, finding 4): a leader whose
PostgreSQL is down starts it as a primary only when pg_control says it was one, and a former
primary that forked on the leader's own timeline is re-cloned (pg_rewind cannot see such a fork).
"""

from __future__ import annotations

import pytest

from pgwarden.core.actions import Promote, Reclone, RenewLease, StartPostgres
from pgwarden.core.decide import decide
from pgwarden.core.model import Role
from pgwarden.core.rewind import forked_on_one_timeline

from .builders import UP_N2, leader_obs, member, obs, replica_pg, stopped_pg, view


@pytest.mark.parametrize("was_primary", [False, None])
def test_leader_with_standby_data_starts_it_as_a_standby_then_promotes(was_primary: bool | None) -> None:
    """A new leader whose PostgreSQL died during promotion: pg_control still says "in archive
    recovery". Starting it as primary would keep the old timeline."""
    d = decide(leader_obs(stopped_pg(was_primary=was_primary)))
    assert d.actions == (RenewLease(), StartPostgres("replica", None))
    # Once it runs (in recovery), the next loop promotes it: a new timeline.
    assert decide(leader_obs(replica_pg(None))).actions == (RenewLease(), Promote())


def test_leader_with_primary_data_restarts_in_place() -> None:
    d = decide(leader_obs(stopped_pg(was_primary=True)))
    assert d.actions == (RenewLease(), StartPostgres("primary"))


def test_former_primary_ahead_on_the_leaders_own_timeline_is_recloned() -> None:
    v = view("n2", [member("n1"), member("n2", Role.PRIMARY, timeline=1, lsn=900)])
    d = decide(obs("n1", stopped_pg(was_primary=True, timeline=1, checkpoint_lsn=1000), v))
    assert len(d.actions) == 1 and isinstance(d.actions[0], Reclone)
    assert d.actions[0].source == UP_N2


def test_fresh_clone_behind_the_leader_on_its_timeline_just_starts() -> None:
    """pg_basebackup copies a pg_control that says "in production": not a fork while behind."""
    v = view("n2", [member("n1"), member("n2", Role.PRIMARY, timeline=1, lsn=1200)])
    d = decide(obs("n1", stopped_pg(was_primary=True, timeline=1, checkpoint_lsn=1000), v))
    assert d.actions == (StartPostgres("replica", UP_N2),)


@pytest.mark.parametrize(("local_tl", "lsn", "was_primary", "leader_tl", "leader_lsn", "forked"), [
    (1, 1000, True, 1, 900, True),
    (1, 900, True, 1, 900, False),
    (1, 1000, False, 1, 900, False),  # a standby never wrote WAL of its own
    (1, 1000, None, 1, 900, False),
    (1, 1000, True, 2, 900, False),  # different timelines: diverged() and pg_rewind handle it
    (1, None, True, 1, 900, False),
    (1, 1000, True, 1, None, False),
])
def test_forked_on_one_timeline(local_tl: int, lsn: int | None, was_primary: bool | None,
                                leader_tl: int, leader_lsn: int | None, forked: bool) -> None:
    assert forked_on_one_timeline(local_tl, lsn, was_primary, leader_tl, leader_lsn) is forked
