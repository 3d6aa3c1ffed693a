"""Several nodes on one simulated clock: each runs the real agent pieces (observe -> `decide` ->
`Executor`) against a simulated PostgreSQL and fencer and its own client of one in-memory store
(`MemKV` on the simulated clock: leases expire, compare-and-swap and lease ownership are real).
The test plays the network, the clients and the faults.

Invariants, checked after every effect and every action (SAFETY rules 1-4, 6, 7, 13):
never two writable primaries at the same instant; a writable primary holds an unexpired lease by
its own clock (`LeaseKeeper`) and in the store; and in a synchronous mode, every commit a primary
acknowledged is in the history of every later primary.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from pgwarden.agent.executor import Executor, LocalFacts
from pgwarden.agent.lease import LeaseKeeper
from pgwarden.config.schema import EtcdConfig, NodeConfig, PgCredentials, PostgresConfig, StoreConfig
from pgwarden.core.actions import AcquireLease, Clone, Reclone, Rewind, StartPostgres
from pgwarden.core.decide import decide
from pgwarden.core.fast_path import wants_check
from pgwarden.core.model import (
    ClusterView,
    CrashEvidence,
    DataState,
    FailoverRequest,
    LeaderCheck,
    Me,
    MemberInfo,
    Observation,
    PeerReading,
    PgView,
    ReplicationStat,
    Role,
    SyncState,
    Tags,
)
from pgwarden.core.settings import ClusterSettings
from pgwarden.core.slot_copies import pending_copies
from pgwarden.core.sync import WILDCARD
from pgwarden.core.waits import CopyClock, StreamClock, UnhealthyClock, WaitClocks
from pgwarden.store.base import StoreError
from pgwarden.store.cluster import ClusterStore
from pgwarden.store.documents import LEADER, SYNC, load_sync
from tests.core.sim.postgres import SimFencer, SimPostgres
from tests.support.memkv import MemKV, MemServer

DT = 0.25
SYSID = "7300000000000000001"
CLUSTER = "sim"
EPOCH = 1_700_000_000.0


# The simulated nodes never connect: credentials only because a node file must name them.
SIM_POSTGRES = PostgresConfig(superuser=PgCredentials(username="postgres", password="sim-super-pw"),
                              replication=PgCredentials(username="replicator", password="sim-repl-pw"))


class SimClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def wall(self) -> float:
        return EPOCH + self.t


@dataclass
class Agent:
    """One run of the agent process: what a restart forgets (its store session and lease
    included)."""

    kv: MemKV
    store: ClusterStore
    lease: LeaseKeeper
    facts: LocalFacts
    executor: Executor
    waits: WaitClocks = field(default_factory=WaitClocks)
    stream: StreamClock = field(default_factory=StreamClock)
    copies: CopyClock = field(default_factory=CopyClock)
    unhealthy: UnhealthyClock = field(default_factory=UnhealthyClock)


@dataclass
class Node:
    name: str
    phase: float  # offset of its HA loop within loop_wait
    pg: SimPostgres
    fencer: SimFencer
    agent: Agent
    tags: Tags = field(default_factory=Tags)
    frozen_until: float = 0.0  # agent stopped (SIGSTOP), or the machine down
    restart_agent: bool = False  # at the end of the freeze, a new agent process (after a crash)
    message: str = ""  # its last decision's message, logged when it changes (as the runner does)
    loop_hung: bool = False  # its HA loop blocks while its REST API still answers peers
    store_cut_until: float = 0.0
    peers_cut_until: float = 0.0
    slow_until: float = 0.0  # a replica connected to its upstream that receives nothing (lag grows)


class World:
    def __init__(self, names: tuple[str, ...] = ("n1", "n2", "n3"), cluster: ClusterSettings | None = None,
                 tags: dict[str, Tags] | None = None):
        self.s = cluster or ClusterSettings()
        self.clock = SimClock()
        self.server = MemServer()
        self.log: list[str] = []
        self.promotions: list[tuple[float, str, int]] = []
        self.checking = True
        # The newest acknowledged commit (timeline, lsn) and who acknowledged it.
        self.acked: tuple[int, int, str] | None = None
        self.nodes: dict[str, Node] = {}
        for i, n in enumerate(names):
            pg, fencer = SimPostgres(n, self._pg, self._changed, self.elapse), SimFencer()
            self.nodes[n] = Node(n, (i * DT) % self.s.loop_wait, pg, fencer, self._agent(n, pg, fencer),
                                 (tags or {}).get(n, Tags()))
        setup = self.nodes[names[0]].agent.store
        setup.set_initialized(SYSID, 1.0)
        setup.set_settings(self.s, None, 1.0)
        first = self.nodes[names[0]]
        first.pg.role = "primary"
        for n in names[1:]:
            self.nodes[n].pg.upstream = names[0]
        for node in self.nodes.values():
            self.publish(node, self.pg_view(node))
        assert first.agent.executor.run((AcquireLease(),), None, self.pg_view(first))

    @property
    def t(self) -> float:
        return self.clock.t

    def _pg(self, host: str) -> SimPostgres:
        return self.nodes[host].pg

    def _agent(self, name: str, pg: SimPostgres, fencer: SimFencer) -> Agent:
        kv = MemKV(CLUSTER, self.server, clock=self.clock)
        store = ClusterStore(kv, clock=self.clock)
        lease, facts = LeaseKeeper(), LocalFacts()
        cfg = NodeConfig(cluster=CLUSTER, name=name, data_dir=Path("/nonexistent") / name,
                         store=StoreConfig(etcd=EtcdConfig(hosts=["127.0.0.1:2379"])),
                         postgresql=SIM_POSTGRES)
        ex = Executor(cfg, pg, store, lease, fencer, facts, lambda: self.s, self.s,
                      clock=self.clock, wall=self.clock.wall)
        return Agent(kv, store, lease, facts, ex)

    def _changed(self, what: str) -> None:
        self.log.append(f"{self.t:.2f} {what}")
        if " promoted to timeline " in what:
            name = what.split()[0]
            self.promotions.append((self.t, name, self.nodes[name].pg.timeline))
        self.check()

    # -- faults ------------------------------------------------------------------------------
    def crash(self, name: str, down_for: float) -> None:
        """The machine dies (PostgreSQL, agent and fencer) and comes back after `down_for`."""
        node = self.nodes[name]
        node.pg.crash()
        node.fencer.disarm()
        node.frozen_until = self.t + down_for
        node.restart_agent = True

    def restart_agent(self, node: Node) -> None:
        self.log.append(f"{self.t:.2f} {node.name}'s agent restarts")
        node.agent.kv.close()
        node.agent = self._agent(node.name, node.pg, node.fencer)
        node.restart_agent = False
        node.message = ""

    def request(self, req: FailoverRequest) -> None:
        """An operator's request, written as `ctl` writes it (create-only)."""
        assert self.ctl().set_failover(req, None, 1.0)

    def ctl(self) -> ClusterStore:
        return ClusterStore(MemKV(CLUSTER, self.server, clock=self.clock), clock=self.clock)

    def failover_request(self) -> FailoverRequest | None:
        return self.ctl().snapshot(1.0).failover

    # -- the store as it is ------------------------------------------------------------------
    def stored_sync(self) -> SyncState | None:
        with self.server.cond:
            r = self.server.keys(CLUSTER).get(SYNC)
        return load_sync(r.value, str(r.version)) if r is not None else None

    def leader_key(self) -> str | None:
        with self.server.cond:
            self.server.expire(self.t)
            r = self.server.keys(CLUSTER).get(LEADER)
        return r.value if r is not None else None

    # -- observations ------------------------------------------------------------------------
    def link_ok(self, a: Node, b: Node) -> bool:
        return self.t >= a.peers_cut_until and self.t >= b.peers_cut_until

    def streaming(self, node: Node) -> bool:
        up = self.nodes.get(node.pg.upstream or "")
        if node.pg.role != "replica" or up is None or not up.pg.running or not self.link_ok(node, up):
            return False
        return self.on_lineage(node.pg, up.pg)

    @staticmethod
    def on_lineage(pg: SimPostgres, up: SimPostgres) -> bool:
        """Is pg's WAL a prefix of up's history?"""
        if pg.timeline == up.timeline:
            return pg.lsn <= up.lsn or up.role == "replica"
        if pg.timeline > up.timeline:
            return False
        ends = [sw for tl, sw in up.lineage if tl == pg.timeline]
        return bool(ends) and pg.lsn <= ends[0]

    def replication(self, node: Node) -> tuple[ReplicationStat, ...]:
        if node.pg.role != "primary":
            return ()
        return tuple(ReplicationStat(o.name, "streaming", "async", o.pg.lsn) for o in self.nodes.values()
                     if o.pg.upstream == node.name and self.streaming(o))

    def pg_view(self, node: Node) -> PgView:
        pg, a = node.pg, node.agent
        replica = pg.role == "replica"
        view = PgView(
            data=DataState.VALID, running=pg.running, healthy=pg.running and not pg.unhealthy,
            in_recovery=None if not pg.running else replica, system_id=SYSID, timeline=pg.timeline,
            lsn=pg.lsn, received_lsn=pg.lsn if replica else None, replayed_lsn=pg.lsn if replica else None,
            checkpoint_lsn=pg.lsn, was_primary=pg.was_primary, clean_shutdown=True,
            upstream=pg.upstream if pg.running else None, streaming=self.streaming(node),
            sync=pg.sync, replication=self.replication(node),
            postmaster_pid=pg.pid, sync_applied_lsn=pg.sync_applied_lsn if pg.running else None,
            rewind_failed=a.facts.rewind_failed, start_failures=a.facts.start_failures,
        )
        # As the runner does: the clocks for "not streaming" and "unhealthy".
        leader = self.leader_key()
        leader_tl = self.nodes[leader].pg.timeline if leader and leader != node.name else None
        a.stream.saw(view, leader_tl, self.t)
        a.unhealthy.saw(view, self.t)
        return replace(view, not_streaming_for=a.stream.not_streaming_for(self.t),
                       unhealthy_for=a.unhealthy.unhealthy_for(self.t))

    def member(self, node: Node, pgv: PgView) -> MemberInfo:
        role = Role.UNKNOWN if not pgv.running else Role.REPLICA if pgv.in_recovery else Role.PRIMARY
        return MemberInfo(name=node.name, api_url="", host=node.name, port=5432, role=role,
                          state="running" if pgv.running else "stopped", running=pgv.running and pgv.healthy,
                          timeline=pgv.timeline, lsn=pgv.lsn, received_lsn=pgv.received_lsn,
                          replayed_lsn=pgv.replayed_lsn,
                          upstream=pgv.upstream if role == Role.REPLICA else None,
                          streaming=role == Role.REPLICA and pgv.streaming, tags=node.tags,
                          postmaster_pid=pgv.postmaster_pid)

    def peers(self, node: Node) -> dict[str, PeerReading]:
        """GET /position of every other member, answered by its agent from its server now."""
        out = {}
        for o in self.nodes.values():
            if o is node:
                continue
            if not (self.link_ok(node, o) and self.t >= o.frozen_until):
                out[o.name] = PeerReading(o.name, False)
                continue
            role = {"primary": Role.PRIMARY, "replica": Role.REPLICA}.get(o.pg.role, Role.UNKNOWN)
            rl = o.pg.lsn if o.pg.role == "replica" else None
            out[o.name] = PeerReading(o.name, True, role, o.pg.running, o.pg.timeline, rl, rl, o.pg.lsn)
        return out

    # -- rule 16's evidence, as agent/crash_check.py gathers it -------------------------------
    def gone(self, node: Node) -> bool:
        """Its agent and PostgreSQL were killed on a live host (`crash`, until the agent restarts):
        both its ports refuse. A frozen agent (SIGSTOP) or a cut link never reads as refused."""
        return node.restart_agent and self.t < node.frozen_until and not node.pg.running

    def leader_check(self, o: Node, leader: Node) -> LeaderCheck:
        return LeaderCheck(o.name, refused=self.link_ok(o, leader) and self.gone(leader),
                           attached=self.streaming(o) and o.pg.upstream == leader.name)

    def crash_evidence(self, node: Node, pgv: PgView, view: ClusterView) -> CrashEvidence | None:
        leader = self.nodes.get(view.leader.name) if view.leader is not None else None
        if leader is None or view.leader is None or not wants_check(node.name, pgv, view):
            return None
        own = self.leader_check(node, leader)
        if not own.refused or own.attached:
            return None
        checks = {node.name: own}
        for o in self.nodes.values():
            if o is not node and o is not leader and self.link_ok(node, o) and self.t >= o.frozen_until:
                checks[o.name] = self.leader_check(o, leader)
        return CrashEvidence(leader.name, view.leader.token, checks)

    def publish(self, node: Node, pgv: PgView) -> None:
        """The runner's publish step: our member key, and the leader's optime."""
        a = node.agent
        try:
            a.store.publish_member(self.member(node, pgv), self.s.ttl, 1.0)
            if a.lease.held and pgv.running and pgv.in_recovery is False and pgv.lsn is not None:
                a.store.set_optime(pgv.lsn, 1.0)
        except StoreError:
            pass

    # -- one HA loop of one agent ------------------------------------------------------------
    def loop(self, node: Node) -> None:
        a = node.agent
        a.kv.down = self.t < node.store_cut_until
        pgv = self.pg_view(node)
        view: ClusterView | None
        try:
            view = a.store.snapshot(a.lease.call_timeout(self.t, self.s.retry_timeout))
        except StoreError:
            view = None
        if view is not None:
            a.waits.saw(view, self.t)
        crash = self.crash_evidence(node, pgv, view) if view is not None else None
        needs_peers = view is not None and (view.leader is None or view.failover is not None
                                            or crash is not None)
        obs = Observation(
            now=self.t, wall=self.clock.wall(), me=Me(node.name, node.tags, node.name, 5432, ""), pg=pgv,
            store=view, lease=a.lease.view(self.t), peers=self.peers(node) if needs_peers else {},
            settings=self.s, leaderless_for=a.waits.leaderless_for(self.t),
            request_pending_for=a.waits.request_pending_for(self.t), restart_pending=a.facts.restart_pending,
            slots_wanted_at=dict(a.facts.slot_seen), crash=crash,
            copies_pending_for=a.copies.pending_for(self.t),
        )
        decision = decide(obs)
        a.copies.saw(bool(pending_copies(obs)), self.t)
        if decision.message != node.message:
            node.message = decision.message
            self.log.append(f"{self.t:.2f} {node.name}: {decision.message}")
        for action in decision.actions:
            # One action at a time through the real executor, so the invariants are checked
            # between them; it stops at the first failure, as `Executor.run` does.
            ok = a.executor.run((action,), view, pgv)
            self.check()
            if not ok:
                break
        if any(isinstance(x, (Rewind, StartPostgres, Reclone, Clone)) for x in decision.actions):
            a.stream.restart()
        if view is not None:
            self.publish(node, self.pg_view(node) if decision.actions else pgv)

    # -- time --------------------------------------------------------------------------------
    def tick(self) -> None:
        self.clock.t = round(self.t + DT, 6)
        self.fence()
        self.check()
        for node in self.nodes.values():
            if self.t < node.frozen_until:
                continue
            if node.restart_agent:
                self.restart_agent(node)
            off_beat = abs((self.t - node.phase) % self.s.loop_wait) > 1e-9
            if node.loop_hung or off_beat:
                continue
            self.loop(node)
        self.replicate()
        self.write()

    def fence(self) -> None:
        for node in self.nodes.values():  # the fencer: separate from the agent, knows the deadline
            if node.fencer.due(self.t) and node.pg.running:
                node.pg.stop("immediate", 0.0)
                self.log.append(f"{self.t:.2f} fencer stopped {node.name}")

    def elapse(self, seconds: float) -> None:
        """Time passes inside one agent's call (a slow pg_promote): leases expire and fencers
        act meanwhile; other agents' loops wait for the next tick."""
        self.clock.t = round(self.t + seconds, 6)
        self.fence()

    def replicate(self) -> None:
        for node in self.nodes.values():  # streaming replicas catch up with their upstream
            if self.streaming(node) and self.t >= node.slow_until:
                up = self.nodes[node.pg.upstream or ""].pg
                if node.pg.timeline == up.timeline and node.pg.lsn > up.lsn:
                    # Connected to a standby upstream that is behind it: it waits for that one to
                    # catch up; streaming never takes WAL away from a server.
                    continue
                node.pg.timeline, node.pg.lsn, node.pg.lineage = up.timeline, up.lsn, list(up.lineage)

    def write(self) -> None:
        """Clients commit on every writable primary, one commit a tick; a commit is acknowledged
        once the standbys its synchronous setting waits for have flushed it (rule 6).

        The commits the cluster promises to keep (`acked`), in a synchronous mode: those
        acknowledged under a synchronous setting, and those a primary acknowledged while the store
        holds a synchronous promise (every acknowledged commit is on k of V, whatever the primary
        waits for), or an empty set naming it as the leader (non-strict fallback: the core then
        lets only that leader promote). Commits acknowledged before the first leader's first
        synchronous step (no record in the store yet) were never promised."""
        for node in self.nodes.values():
            pg = node.pg
            if pg.role != "primary":
                continue
            acked = self.ack_lsn(node)
            newer = acked is not None and (self.acked is None or (pg.timeline, acked) > self.acked[:2])
            if newer and acked is not None and self.s.synchronous and self.promised(node):
                self.acked = (pg.timeline, acked, node.name)
            pg.lsn += 1
            self.check()

    def promised(self, node: Node) -> bool:
        if not node.pg.sync.empty:
            return True
        stored = self.stored_sync()
        return stored is not None and (not stored.empty or stored.leader == node.name)

    def ack_lsn(self, node: Node) -> int | None:
        """The newest of this primary's commits acknowledged to its client (None: none yet)."""
        pg = node.pg
        if pg.sync.empty:
            return pg.lsn if pg.lsn > 0 else None
        flushed = sorted((r.flush_lsn or 0 for r in self.replication(node)
                          if WILDCARD in pg.sync.members or r.name in pg.sync.members), reverse=True)
        if len(flushed) < pg.sync.quorum:
            return None
        return min(pg.lsn, flushed[pg.sync.quorum - 1]) or None

    def run(self, seconds: float) -> None:
        for _ in range(round(seconds / DT)):
            self.tick()

    def primaries(self) -> list[str]:
        return [n.name for n in self.nodes.values() if n.pg.role == "primary"]

    def check(self) -> None:
        if not self.checking:
            return
        p = self.primaries()
        tail = "\n".join(self.log[-15:])
        assert len(p) <= 1, f"two writable primaries at {self.t}: {p}\n{tail}"
        for name in p:
            lease = self.nodes[name].agent.lease
            assert lease.held and self.t < lease.deadline, \
                f"{name} writable past its lease at {self.t}\n{tail}"
            key = self.leader_key()
            assert key == name, f"{name} writable while the store names {key} at {self.t}\n{tail}"
            if self.acked is not None:
                tl, lsn, by = self.acked
                assert self.nodes[name].pg.holds(tl, lsn), \
                    f"{name} is primary without commit {lsn} of timeline {tl} that {by} acknowledged\n{tail}"
