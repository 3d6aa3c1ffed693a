"""Operators' local commands (POST /restart, POST /reinitialize) decided in the core: a leader's
restart renews first and only stops PostgreSQL, so whether it comes back as a primary is decided
next loop under the lease as it then stands (safety review, finding 2)."""

from __future__ import annotations

import dataclasses

from pgwarden.core.actions import RenewLease, StartPostgres, StopPostgres, Wipe
from pgwarden.core.decide import decide
from pgwarden.core.model import LocalCommand, Role

from .builders import NOW, leader_obs, member, obs, primary_pg, replica_pg, settings, stopped_pg, view

RESTART = StopPostgres("fast", "restart requested", restart=True)


def test_leader_restart_renews_then_only_stops() -> None:
    d = decide(dataclasses.replace(leader_obs(), command=LocalCommand.RESTART))
    assert d.actions == (RenewLease(), RESTART)
    assert not any(isinstance(a, StartPostgres) for a in d.actions)


def test_leader_whose_lease_ran_out_meanwhile_does_not_start_as_primary() -> None:
    """The loop after a long stop: our key still names us but the lease is gone by our clock."""
    o = obs("n1", stopped_pg(was_primary=True), view("n1"), held=False)
    d = decide(dataclasses.replace(o, restart_pending=True))
    assert not any(isinstance(a, StartPostgres) and a.role == "primary" for a in d.actions)
    assert d.actions == (RenewLease(),)  # re-adopt first; starting waits for a valid lease


def test_leader_restarted_under_a_valid_lease_comes_back_as_primary_even_when_paused() -> None:
    v = view("n1", cluster=settings(paused=True))
    o = dataclasses.replace(leader_obs(stopped_pg(was_primary=True), v), restart_pending=True)
    assert decide(o).actions == (RenewLease(), StartPostgres("primary"))
    # Without a pending restart, a paused leader leaves a stopped server alone.
    assert decide(leader_obs(stopped_pg(was_primary=True), v)).actions == (RenewLease(),)


def test_replica_restart_stops_and_next_loop_starts_it_as_replica() -> None:
    d = decide(dataclasses.replace(obs("n2", replica_pg("n1")), command=LocalCommand.RESTART))
    assert d.actions == (RESTART,)
    again = dataclasses.replace(obs("n2", stopped_pg()), restart_pending=True)
    assert [type(a).__name__ for a in decide(again).actions] == ["StartPostgres"]


def test_restart_of_a_stopped_server_is_the_usual_decision() -> None:
    o = obs("n2", stopped_pg())
    assert decide(dataclasses.replace(o, command=LocalCommand.RESTART)) == decide(o)


def test_reinitialize_refused_on_the_leader() -> None:
    d = decide(dataclasses.replace(leader_obs(), command=LocalCommand.REINITIALIZE))
    assert d.actions == ()
    assert "refused" in d.message


def test_reinitialize_refused_without_a_running_leader() -> None:
    v = view("n1", [member("n1", Role.PRIMARY, running=False), member("n2")])
    d = decide(dataclasses.replace(obs("n2", replica_pg("n1"), v), command=LocalCommand.REINITIALIZE))
    assert d.actions == ()
    assert "no running leader" in d.message


def test_reinitialize_of_a_replica_stops_then_wipes() -> None:
    d = decide(dataclasses.replace(obs("n2", replica_pg("n1")), command=LocalCommand.REINITIALIZE))
    assert d.actions == (StopPostgres("immediate", "reinitialize requested"), Wipe("reinitialize requested"))


def test_reinitialize_works_on_data_of_another_cluster() -> None:
    """The message for foreign data tells the operator to reinitialize: that must work."""
    pg = dataclasses.replace(replica_pg("n1"), system_id="999")
    d = decide(dataclasses.replace(obs("n2", pg), command=LocalCommand.REINITIALIZE))
    assert any(isinstance(a, Wipe) for a in d.actions)


def test_a_restart_request_does_not_outlive_its_primary_role() -> None:
    """A former primary without the lease that is asked to restart only stops; the rules pick
    its role when it starts (here: a replica of the leader)."""
    v = view("n2", [member("n1"), member("n2", Role.PRIMARY)])
    d = decide(dataclasses.replace(obs("n1", primary_pg(), v, now=NOW), command=LocalCommand.RESTART))
    assert d.actions == (RESTART,)
