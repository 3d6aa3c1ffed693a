"""Property test of SAFETY rules 6-8: a primary and standbys s1..sn under random interleavings of
commits, disconnects, catch-ups, settings changes and the leader's sync loop (one `next_step`
applied per loop). After every step:

* the store's promise (k, V) holds: every acknowledged commit is on at least k members of V;
* the primary's synchronous_standby_names enforces that promise for the commits to come;
* if the primary died right now, every member that the promotion rule would let through, given
  the readings of any subset of the other members, has every acknowledged commit.

WAL is sequential, so "a standby has commit c" is "its flushed LSN >= c", and "every acknowledged
commit" reduces to the newest one.
"""

from __future__ import annotations

from itertools import combinations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from pgwarden.config.schema import ClusterSettings, SyncMode
from pgwarden.core.model import NO_SYNC, ReplicationStat, SyncConfig, SyncState
from pgwarden.core.sync import (
    NO_PROMISE,
    WILDCARD,
    Promise,
    desired_sync,
    enforces,
    may_promote_stored,
    next_step,
)

NAMES = ("s1", "s2", "s3", "s4")
LEADER = "p"
_SETTINGS: dict[tuple[SyncMode, int, bool], ClusterSettings] = {}


def cluster_settings(mode: SyncMode, count: int, strict: bool) -> ClusterSettings:
    key = (mode, count, strict)
    if key not in _SETTINGS:
        _SETTINGS[key] = ClusterSettings(synchronous_mode=mode, synchronous_node_count=count,
                                         synchronous_mode_strict=strict)
    return _SETTINGS[key]


def acknowledged(pg: SyncConfig, holders: set[str]) -> bool:
    """Would PostgreSQL acknowledge a commit that `holders` have flushed, given
    synchronous_standby_names `ANY k (...)`?"""
    if pg.empty:
        return True  # asynchronous
    if WILDCARD in pg.members:
        return len(holders) >= pg.quorum
    return len(holders & pg.members) >= pg.quorum


class SyncWorld(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.standbys: tuple[str, ...] = ()
        self.nosync: frozenset[str] = frozenset()
        self.flush: dict[str, int] = {}
        self.connected: dict[str, bool] = {}
        self.lsn = 0
        self.acked = 0
        self.pg: SyncConfig = NO_SYNC
        self.applied: int | None = None
        self.store: Promise = NO_PROMISE
        self.cfg = cluster_settings(SyncMode.ON, 1, False)

    @initialize(
        n=st.integers(2, 4),
        nosync=st.sets(st.sampled_from(NAMES), max_size=1),
        mode=st.sampled_from([SyncMode.ON, SyncMode.QUORUM]),
        count=st.integers(1, 3),
        strict=st.booleans(),
    )
    def setup(self, n: int, nosync: set[str], mode: SyncMode, count: int, strict: bool) -> None:
        self.standbys = NAMES[:n]
        self.nosync = frozenset(nosync) & frozenset(self.standbys)
        self.flush = dict.fromkeys(self.standbys, 0)
        self.connected = dict.fromkeys(self.standbys, True)
        self.cfg = cluster_settings(mode, count, strict)

    # -- the world -----------------------------------------------------------------------

    @rule(receivers=st.frozensets(st.sampled_from(NAMES)))
    def commit(self, receivers: frozenset[str]) -> None:
        self.lsn += 1
        for s in receivers:
            if self.connected.get(s):
                self.flush[s] = self.lsn  # streaming is in order: it has everything before too
        holders = {s for s in self.standbys if self.flush[s] >= self.lsn}
        if acknowledged(self.pg, holders):
            self.acked = self.lsn

    @rule(s=st.sampled_from(NAMES), pct=st.integers(0, 100))
    def catch_up(self, s: str, pct: int) -> None:
        if self.connected.get(s):
            self.flush[s] += (self.lsn - self.flush[s]) * pct // 100

    @rule(s=st.sampled_from(NAMES))
    def disconnect(self, s: str) -> None:
        if s in self.connected:
            self.connected[s] = False

    @rule(s=st.sampled_from(NAMES), pct=st.sampled_from([0, 50, 100]))
    def reconnect(self, s: str, pct: int) -> None:
        """Back with all, half or none of what it missed."""
        if self.connected.get(s) is False:
            self.connected[s] = True
            self.flush[s] += (self.lsn - self.flush[s]) * pct // 100

    @rule(mode=st.sampled_from([SyncMode.ON, SyncMode.QUORUM]), count=st.integers(1, 3),
          strict=st.booleans())
    def change_settings(self, mode: SyncMode, count: int, strict: bool) -> None:
        self.cfg = cluster_settings(mode, count, strict)

    # -- the leader's sync loop ----------------------------------------------------------

    @precondition(lambda self: bool(self.standbys))
    @rule(loops=st.integers(1, 3))
    def leader_loops(self, loops: int) -> None:
        """A few loops in a row (with nothing else happening in between)."""
        for _ in range(loops):
            self.leader_loop()

    def leader_loop(self) -> None:
        eligible = {s for s in self.standbys if self.connected[s] and s not in self.nosync}
        lag = {s: self.lsn - self.flush[s] for s in eligible}
        want = desired_sync(self.cfg, eligible, self.store, lag, set(self.standbys) - self.nosync)
        stats = [ReplicationStat(s, "streaming", "async", self.flush[s])
                 for s in self.standbys if self.connected[s]]
        step = next_step(self.pg, self.store, want, stats, self.applied)
        assert step.store is None or step.pg is None, "one change per loop"
        if step.store is not None:
            self.store = step.store
        elif step.pg is not None:
            self.pg = step.pg
            self.applied = self.lsn  # takes effect for the commits after this one

    # -- invariants ----------------------------------------------------------------------

    @invariant()
    def store_promise_holds(self) -> None:
        if not self.store.empty:
            have = {s for s in self.store.members if self.flush.get(s, 0) >= self.acked}
            assert len(have) >= self.store.quorum, (self.store, self.flush, self.acked, self.pg)

    @invariant()
    def primary_enforces_store(self) -> None:
        assert enforces(self.pg, self.store), (self.pg, self.store)

    @invariant()
    def crash_never_loses_an_acknowledged_commit(self) -> None:
        state = SyncState(LEADER, self.store.members, self.store.quorum)
        for cand in self.standbys:
            others = [s for s in self.standbys if s != cand]
            for r in range(len(others) + 1):
                for readable in combinations(others, r):
                    readings: dict[str, int | None] = {s: self.flush[s] for s in readable}
                    ok, _ = may_promote_stored(cand, state, True, self.flush[cand], readings)
                    if ok:
                        assert self.flush[cand] >= self.acked, (
                            f"{cand} may promote reading {readable} but lacks commit {self.acked}: "
                            f"store={self.store} pg={self.pg} flush={self.flush}"
                        )


SyncWorld.TestCase.settings = settings(
    max_examples=200, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestSyncWorld = SyncWorld.TestCase
