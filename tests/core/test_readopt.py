"""An agent restarted while its leader key still names it (SAFETY rule 5): on its first look at
the store it may take the key back at once, behind a renewal; on any later look a primary without
the lease stops writes first."""

from __future__ import annotations

from dataclasses import replace

from pgwarden.core.actions import Demote, Promote, RenewLease, StartPostgres
from pgwarden.core.decide import decide
from pgwarden.core.model import Observation, PgView

from .builders import kinds, obs, primary_pg, replica_pg, stopped_pg, view


def _restarted(pg: PgView, first_look: bool = True) -> Observation:
    return replace(obs("n1", pg, view("n1"), held=False), first_look=first_look)


def test_running_primary_renews_first_and_keeps_serving() -> None:
    d = decide(_restarted(primary_pg()))
    assert d.actions[0] == RenewLease()
    assert "Demote" not in kinds(d.actions)
    assert "re-adopting" in d.message


def test_same_primary_after_the_first_look_demotes() -> None:
    d = decide(_restarted(primary_pg(), first_look=False))
    assert d.actions and isinstance(d.actions[0], Demote)


def test_every_readopting_decision_starts_with_the_renewal() -> None:
    """Nothing may start, promote or write for the leader before the renewal succeeded."""
    for pg in (primary_pg(), stopped_pg(was_primary=True), stopped_pg(was_primary=False), replica_pg(None)):
        d = decide(_restarted(pg))
        assert d.actions[0] == RenewLease(), (pg, d)
        assert d.actions.count(RenewLease()) == 1


def test_stopped_primary_restarts_in_place_behind_the_renewal() -> None:
    d = decide(_restarted(stopped_pg(was_primary=True)))
    assert d.actions == (RenewLease(), StartPostgres("primary"))


def test_standby_holding_the_key_promotes_behind_the_renewal() -> None:
    assert decide(_restarted(replica_pg(None))).actions == (RenewLease(), Promote())


def test_first_look_changes_nothing_for_a_key_held_by_someone_else() -> None:
    o = obs("n2", replica_pg("n1"), view("n1"))
    assert decide(replace(o, first_look=True)) == decide(o)
