"""A small in-memory world for the majority failsafe (SAFETY rule 17): several real `decide()`
cores, a store with a leader key on a TTL and the failsafe set, per-node store reachability,
links between members that can be cut, members' promise ledgers (`core.failsafe.confirm/vote`),
clocks that drift, a fencer per node, confirmation answers that arrive late, and votes handed
back (`core.failsafe.may_release_votes`) by messages that arrive late too.

Kept apart from test_scenarios.py on purpose: it models only what rule 17 needs (the runner's
confirmation rounds and votes, as agent/runner.py asks them), and checks after every action that
no two nodes are writable primaries at the same instant.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from pgwarden.config.schema import ClusterSettings
from pgwarden.core import actions as A
from pgwarden.core import failsafe
from pgwarden.core.decide import decide
from pgwarden.core.model import (
    ClusterView,
    DataState,
    FailsafeRound,
    LeaderKey,
    Lease,
    Me,
    MemberInfo,
    Observation,
    PgView,
    Role,
    Tags,
)
from pgwarden.core.settings import LEASE_MARGIN

SYSID = "7300000000000000001"
SETTINGS = ClusterSettings(ttl=4.0, loop_wait=1.0, retry_timeout=1.0, failsafe=True)


@dataclass
class Node:
    name: str
    rate: float  # clock rate (drift)
    offset: float
    primary: bool = False
    timeline: int = 1
    held: bool = False
    deadline: float = 0.0  # local monotonic
    next_loop: float = 0.0  # global time
    frozen_until: float = 0.0
    last_view: ClusterView | None = None
    bound_until: float = 0.0  # local
    votes: dict[tuple[str, str], float] = field(default_factory=dict)  # (candidate, round) -> until
    rounds: int = 0
    asked: tuple[str, list[str]] | None = None  # this loop's vote round and who granted
    outcome: failsafe.AcquireOutcome = "not tried"
    # A candidate's loop between asking for votes and acting on them: (obs, reach, acts at).
    waiting: tuple[Observation, bool, float] | None = None
    pending: list[tuple[str, frozenset[str]]] = field(default_factory=list)

    def clock(self, t: float) -> float:
        return self.offset + t * self.rate

    def votes_by_candidate(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for (c, _), until in self.votes.items():
            out[c] = max(out.get(c, 0.0), until)
        return out

    def writable(self, t: float) -> bool:
        """A primary accepts writes until its deadline; past it the fencer has stopped it."""
        return self.primary and self.held and self.clock(t) < self.deadline


@dataclass
class Store:
    leader: str | None = None
    expires: float = 0.0  # global time
    failsafe: frozenset[str] = frozenset()
    failsafe_rev: int = 0
    members: dict[str, MemberInfo] = field(default_factory=dict)

    def key(self, t: float) -> str | None:
        if self.leader is not None and t >= self.expires:
            self.leader = None
        return self.leader


class World:
    def __init__(self, names: list[str], seed: int, drift: float = 0.01) -> None:
        self.rng = random.Random(seed)
        self.t = 0.0
        self.nodes = {n: Node(n, 1 + self.rng.uniform(-drift, drift), self.rng.uniform(0, 1000))
                      for n in names}
        self.store = Store()
        self.store_down_until = 0.0
        self.cut_from_store: dict[str, float] = {}  # node -> until (global)
        self.cut_links: dict[frozenset[str], float] = {}
        self.max_delay = 0.3  # one-way delay of a failsafe request or answer
        self.promotions: list[tuple[float, str]] = []
        self.releases: list[tuple[float, str, str, str]] = []  # (arrives, member, candidate, round)
        self.released = 0  # votes handed back (the stories check the path is taken)
        first = names[0]
        n = self.nodes[first]
        n.primary, n.held = True, True
        n.deadline = n.clock(0) + SETTINGS.ttl - LEASE_MARGIN
        self.store.leader, self.store.expires = first, SETTINGS.ttl
        self.store.failsafe = frozenset(names)
        self.store.failsafe_rev = 1
        for node in self.nodes.values():
            self.store.members[node.name] = self._info(node)
            node.next_loop = self.rng.uniform(0, SETTINGS.loop_wait)

    # -- faults ---------------------------------------------------------------------------------
    def reaches_store(self, name: str) -> bool:
        return self.t >= self.store_down_until and self.t >= self.cut_from_store.get(name, 0.0)

    def linked(self, a: str, b: str) -> bool:
        return self.t >= self.cut_links.get(frozenset((a, b)), 0.0)

    # -- running ----------------------------------------------------------------------------------
    def run(self, until: float, dt: float = 0.05) -> None:
        while self.t < until:
            self.t = round(self.t + dt, 6)
            self._deliver_releases()
            for node in sorted(self.nodes.values(), key=lambda n: n.next_loop):
                if node.waiting is not None and node.waiting[2] <= self.t:
                    obs, reach, _ = node.waiting
                    node.waiting = None
                    if self.t >= node.frozen_until:
                        self._act(node, obs, reach)
                if node.next_loop <= self.t and node.waiting is None:
                    if self.t >= node.frozen_until:
                        self.loop(node)
                    node.next_loop = self.t + SETTINGS.loop_wait * self.rng.uniform(0.8, 1.2)
            self.check()

    def check(self) -> None:
        writable = [n.name for n in self.nodes.values() if n.writable(self.t)]
        assert len(writable) <= 1, f"two writable primaries at t={self.t:.2f}: {writable}"

    def _info(self, node: Node) -> MemberInfo:
        return MemberInfo(name=node.name, api_url=f"http://{node.name}", host=node.name, port=5432,
                          role=Role.PRIMARY if node.primary else Role.REPLICA, state="running",
                          running=True, timeline=node.timeline, lsn=1000, received_lsn=1000,
                          replayed_lsn=1000, upstream=None if node.primary else self.store.leader)

    def _view(self) -> ClusterView:
        leader = self.store.key(self.t)
        return ClusterView(
            initialized=SYSID, init_holder=None, settings=SETTINGS, settings_token="c1",
            leader=LeaderKey(leader, "l") if leader else None, members=dict(self.store.members),
            sync=None, failover=None, failsafe_members=self.store.failsafe,
            failsafe_token=str(self.store.failsafe_rev) if self.store.failsafe_rev else "",
        )

    def _pg(self, node: Node, view: ClusterView | None) -> PgView:
        tl = max(n.timeline for n in self.nodes.values())
        if not node.primary:
            node.timeline = tl  # a replica streams the newest timeline in this model
        upstream = view.leader.name if view is not None and view.leader is not None else None
        return PgView(data=DataState.VALID, running=True, healthy=True, in_recovery=not node.primary,
                      system_id=SYSID, timeline=node.timeline, lsn=1000, received_lsn=1000,
                      replayed_lsn=1000, upstream=None if node.primary else upstream,
                      streaming=not node.primary)

    def member_state(self, m: Node, reachable: bool) -> failsafe.MemberState:
        named = self.store.key(self.t) if reachable else None
        v = m.last_view
        leader = v.leader.name if v is not None and v.leader is not None else None
        lm = v.members.get(leader) if v is not None and leader is not None else None
        return failsafe.MemberState(
            name=m.name, failsafe_on=True, store_reachable=reachable, store_leader=named, leader=leader,
            leader_timeline=lm.timeline if lm is not None else None, primary=m.primary or m.held,
            ttl=SETTINGS.ttl, bound_until=m.bound_until, votes=m.votes_by_candidate())

    def _confirm_round(self, node: Node, local: float) -> FailsafeRound:
        sets = self._sets(node)
        got: set[str] = set()
        for name in frozenset().union(*sets) - {node.name}:
            m = self.nodes[name]
            if not self.linked(node.name, name) or self.t < m.frozen_until:
                continue
            d1, d2 = self.rng.uniform(0, self.max_delay), self.rng.uniform(0, self.max_delay)
            at = self.t + d1  # the member decides when the request reaches it
            st = self.member_state(m, self.t >= self.store_down_until and
                                   at >= self.cut_from_store.get(name, 0.0))
            until, _ = failsafe.confirm(st, node.name, node.timeline, SETTINGS.ttl, m.clock(at))
            if until is None:
                continue
            m.bound_until = max(m.bound_until, until)
            if (d1 + d2) * node.rate <= failsafe.CONFIRM_WINDOW:  # late answers do not count
                got.add(name)
        return FailsafeRound(local, frozenset(got))

    def _votes(self, node: Node, view: ClusterView) -> frozenset[str] | None:
        if not view.failsafe_members or node.primary or node.clock(self.t) < node.bound_until:
            return None
        got = {node.name}
        node.rounds += 1
        round_id = f"{node.name}.{node.rounds}"
        mine = failsafe.binding_until(node.clock(self.t), SETTINGS.ttl, SETTINGS.ttl)
        node.votes[(node.name, round_id)] = mine
        for name in view.failsafe_members - {node.name}:
            m = self.nodes[name]
            if not self.linked(node.name, name) or self.t < m.frozen_until:
                continue
            at = self.t + self.rng.uniform(0, self.max_delay)
            until, _ = failsafe.vote(self.member_state(m, True), node.name, SETTINGS.ttl, m.clock(at))
            if until is not None:
                m.votes[(node.name, round_id)] = until
                got.add(name)
        node.asked = round_id, sorted(got - {node.name})
        return frozenset(got)

    def _release(self, node: Node) -> None:
        """After the loop's actions, as agent/failsafe_member.py does: hand the round's votes back
        when the core's rule allows; each hand-back message arrives after up to 3 delays (late:
        after newer rounds' votes, which it must not take back)."""
        asked, node.asked = node.asked, None
        if asked is None or not failsafe.may_release_votes(node.outcome):
            return
        round_id, granted = asked
        node.votes.pop((node.name, round_id), None)
        for name in granted:
            if self.linked(node.name, name):
                arrives = self.t + self.rng.uniform(0, 3 * self.max_delay)
                self.releases.append((arrives, name, node.name, round_id))

    def _deliver_releases(self) -> None:
        due = [r for r in self.releases if r[0] <= self.t]
        self.releases = [r for r in self.releases if r[0] > self.t]
        for _, member, candidate, round_id in due:
            if self.t >= self.nodes[member].frozen_until and \
                    self.nodes[member].votes.pop((candidate, round_id), None) is not None:
                self.released += 1

    def _sets(self, node: Node) -> tuple[frozenset[str], ...]:
        v = node.last_view
        if v is None:
            return ()
        node.pending[:] = [p for p in node.pending if p[0] == v.failsafe_token]
        return (v.failsafe_members, *(m for _, m in node.pending))

    def loop(self, node: Node) -> None:
        local = node.clock(self.t)
        if node.held and local >= node.deadline:
            node.held, node.deadline = False, 0.0
        if node.primary and not node.held:
            node.primary = False  # the fencer stopped it; the agent restarts it as a standby
        reach = self.reaches_store(node.name)
        view = self._view() if reach else None
        if view is not None:
            node.last_view = view
        fs_round = votes = None
        if view is None and node.primary and node.held and local < node.deadline - 0.25:
            fs_round = self._confirm_round(node, local)
        elif view is not None and view.leader is None and not node.primary:
            votes = self._votes(node, view)
        obs = Observation(
            now=node.clock(self.t), wall=0.0, me=Me(node.name, Tags(), node.name, 5432, f"http://{node.name}"),
            pg=self._pg(node, view), store=view, lease=Lease(node.held, node.deadline), settings=SETTINGS,
            leaderless_for=10.0, failsafe_bound_until=node.bound_until, failsafe_round=fs_round,
            failsafe_sets=self._sets(node), failsafe_votes=votes, snapshot_at=local,
        )
        if votes is not None:  # the vote round takes a while: other candidates ask meanwhile
            node.waiting = obs, reach, self.t + self.rng.uniform(0, 2 * self.max_delay)
            return
        self._act(node, obs, reach)

    def _act(self, node: Node, obs: Observation, reach: bool) -> None:
        node.outcome = "not tried"
        for action in decide(obs).actions:
            if not self.execute(node, action, reach):
                break
            self.check()
        self._release(node)
        if reach:
            self.store.members[node.name] = self._info(node)

    def execute(self, node: Node, a: A.Action, reach: bool) -> bool:
        # An action runs a little after the decision: a store call may find the store gone.
        self.t = round(self.t + 0.01, 6)
        reach = reach and self.reaches_store(node.name)
        local = node.clock(self.t)
        match a:
            case A.AcquireLease(not_after=not_after):
                node.outcome = "in doubt"  # a store that does not answer: the create may land
                if not reach:
                    return False
                if self.store.key(self.t) is not None:
                    node.outcome = "lost"
                    return False
                self.store.leader, self.store.expires = node.name, self.t + SETTINGS.ttl
                if not_after is not None and local > not_after:
                    self.store.leader = None
                    return False
                node.held, node.deadline = True, local + SETTINGS.ttl - LEASE_MARGIN
                node.outcome = "won"
                return True
            case A.RenewLease():
                if not reach or self.store.key(self.t) != node.name:
                    return False
                self.store.expires = self.t + SETTINGS.ttl
                node.held, node.deadline = True, local + SETTINGS.ttl - LEASE_MARGIN
                return True
            case A.ExtendLease(deadline=deadline):
                if node.held and deadline > node.deadline:
                    node.deadline = deadline
                return True
            case A.Promote():
                node.primary = True
                node.timeline = max(n.timeline for n in self.nodes.values()) + 1
                self.promotions.append((self.t, node.name))
                if self.execute(node, A.RenewLease(), reach):
                    return True
                self._demote(node)  # rule 4: the lease is not confirmed right after promoting
                return False
            case A.Demote():
                return self._demote(node)
            case A.ReleaseLease():
                if reach and self.store.key(self.t) == node.name:
                    self.store.leader = None
                node.held = False
                return True
            case A.WriteFailsafeMembers(members=members, token=token):
                current = str(self.store.failsafe_rev) if self.store.failsafe_rev else ""
                if reach and token != current:
                    return False  # a lost compare-and-swap never lands
                node.pending.append((token, members))
                if not reach:
                    return False  # in doubt: the runner keeps it until a read shows the outcome
                self.store.failsafe, self.store.failsafe_rev = members, self.store.failsafe_rev + 1
                return True
            case _:
                return True  # slots, history, following: nothing rule 17 depends on

    def _demote(self, node: Node) -> bool:
        node.primary = False
        return True
