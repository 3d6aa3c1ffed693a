"""Failover stories over several nodes in memory (`tests/core/sim`): the real core, executor,
lease keeper and store client against simulated PostgreSQL servers and fencers. Every effect is
checked against the world's invariants (never two writable primaries; a writable primary holds an
unexpired lease by its own clock and in the store)."""

from __future__ import annotations

import pytest

from pgwarden.core.actions import Demote, Upstream
from pgwarden.core.decide import decide
from pgwarden.core.model import Me, Observation, Tags
from pgwarden.core.settings import ClusterSettings
from tests.core.sim.world import World


def test_steady_state_keeps_one_primary() -> None:
    w = World()
    w.run(30)
    assert w.primaries() == ["n1"] and w.promotions == []
    assert all(w.streaming(w.nodes[n]) for n in ("n2", "n3"))


@pytest.mark.parametrize(("ttl", "loop_wait", "retry_timeout"), [(2, 0.25, 0.5), (21, 10, 5), (3, 1, 1)])
def test_steady_state_under_tight_valid_timing(ttl: float, loop_wait: float, retry_timeout: float) -> None:
    w = World(cluster=ClusterSettings(ttl=ttl, loop_wait=loop_wait, retry_timeout=retry_timeout))
    w.run(60)
    assert w.primaries() == ["n1"] and w.promotions == [], w.log[:5]


def test_primary_crash_exactly_one_new_primary() -> None:
    w = World()
    w.run(5)
    w.crash("n1", 15)  # the machine dies: PostgreSQL, agent and fencer
    w.run(25)
    assert len(w.promotions) == 1, w.log
    assert len(w.primaries()) == 1 and w.primaries()[0] != "n1"
    new = w.primaries()[0]
    # the old primary comes back as a replica of the new one (rewound: it had one more commit)
    n1 = w.nodes["n1"]
    assert n1.pg.role == "replica" and n1.pg.upstream == new
    assert w.streaming(n1) and n1.pg.timeline == w.nodes[new].pg.timeline


def test_partition_from_store_demotes_before_deadline_then_another_promotes() -> None:
    w = World()
    w.run(5)
    n1 = w.nodes["n1"]
    n1.store_cut_until = w.t + 30
    deadline = n1.agent.lease.deadline
    demoted_at = None
    promoted_at = None
    while w.t < 30:
        w.tick()
        if demoted_at is None and n1.pg.role != "primary":
            demoted_at = w.t
        if promoted_at is None and w.promotions:
            promoted_at = w.promotions[0][0]
    assert demoted_at is not None and demoted_at < deadline
    assert not any("fencer stopped" in line for line in w.log), "the agent itself demoted in time"
    assert promoted_at is not None and promoted_at > demoted_at
    assert w.primaries() != ["n1"] and len(w.primaries()) == 1


def test_frozen_primary_is_fenced_and_follows_the_new_leader_after_resuming() -> None:
    w = World()
    w.run(5)
    n1 = w.nodes["n1"]
    n1.frozen_until = w.t + 15
    w.run(16)
    assert any("fencer stopped n1" in line for line in w.log)
    assert len(w.primaries()) == 1 and w.primaries()[0] != "n1"
    w.run(10)
    assert n1.pg.role == "replica" and w.streaming(n1)


def test_frozen_primary_without_fencer_demotes_in_its_first_loop_on_resume() -> None:
    """The agent part alone (rule 5): resuming while still primary and seeing another leader, it
    decides to demote towards that leader and does so in its first loop. Without the fencer two
    primaries exist while it is frozen, so the world's invariant is off meanwhile; what is checked
    is that its first loop ends that."""
    w = World()
    w.run(5)
    n1 = w.nodes["n1"]
    n1.fencer.works = False
    n1.frozen_until = w.t + 60
    w.checking = False
    w.run(19)
    assert n1.pg.role == "primary"
    leader = w.leader_key()
    assert leader is not None and leader != "n1" and w.nodes[leader].pg.role == "primary"
    n1.frozen_until = w.t  # it resumes now
    obs = Observation(now=w.t, wall=w.clock.wall(), me=Me("n1", Tags(), "n1", 5432, ""), pg=w.pg_view(n1),
                      store=n1.agent.store.snapshot(1.0), lease=n1.agent.lease.view(w.t), settings=w.s)
    d = decide(obs)
    assert isinstance(d.actions[0], Demote) and d.actions[0].upstream == Upstream(leader, leader, 5432)
    w.loop(n1)  # its first loop after resuming
    assert n1.pg.role == "replica" and n1.pg.upstream == leader
    w.checking = True
    w.check()
    w.run(10)
    assert w.primaries() == [leader]


def test_postgres_crash_under_a_live_agent_restarts_in_place() -> None:
    """PostgreSQL dies, the agent does not: it still holds the lease (its own store session), so
    it starts the old primary again in place (rule 12, sharpened) and nobody is promoted."""
    w = World()
    w.run(5)
    w.nodes["n1"].pg.crash()
    w.run(3)
    assert w.primaries() == ["n1"] and w.promotions == []


def test_machine_crash_does_not_readopt_its_key_and_a_failover_follows() -> None:
    """The whole machine restarts within the lease: PostgreSQL and the fencer's armed state went
    with it, and a new agent takes its key back only from a previous run whose fencer still
    guards the primary (architecture.md, "Taking the leader key back after a restart"), so it
    keeps PostgreSQL down until the key lapses. Then exactly one member is promoted (n1 itself, when
    its WAL is the newest) and the others follow it."""
    w = World()
    w.run(5)
    w.crash("n1", 1)
    w.run(3)
    assert w.primaries() == [] and w.leader_key() == "n1"  # never a primary without the lease
    w.run(20)
    assert len(w.promotions) == 1 and len(w.primaries()) == 1, w.log
    new = w.primaries()[0]
    assert all(w.streaming(n) for n in w.nodes.values() if n.name != new)


@pytest.mark.parametrize("fencer", [True, False], ids=["fencer", "no-fencer"])
def test_a_promotion_that_outlasts_the_lease_demotes_at_once(fencer: bool) -> None:
    """Rule 4: n2 takes the lease and promotes, but pg_promote runs past the lease (the key lapses
    in the store meanwhile). The renewal right after promotion fails, so the executor demotes at
    once, with or without the fencer having stopped the server at the deadline already."""
    w = World()
    w.run(5)
    w.nodes["n3"].tags = Tags(nofailover=True)
    n2 = w.nodes["n2"]
    n2.pg.promote_takes = w.s.ttl + 1
    n2.fencer.works = fencer
    w.crash("n1", 60)
    while not w.promotions:
        w.tick()
    assert n2.pg.role != "primary" and not n2.agent.lease.valid(w.t)
    assert any("n2 started as replica" in line for line in w.log[-3:]), w.log[-5:]
    assert ("fencer stopped n2" in "\n".join(w.log[-5:])) == fencer
    n2.pg.promote_takes = 0.0
    w.run(15)
    assert w.primaries() == ["n2"], w.log[-10:]
