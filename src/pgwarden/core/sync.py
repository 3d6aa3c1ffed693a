"""Synchronous replication: what the primary should wait for, and the one safe next step from
what it waits for now and what the store promises (SAFETY rules 6-8).

A promise (k, V) reads "every acknowledged commit is on at least k members of V". The primary's
synchronous_standby_names `ANY k (V)` *enforces* such a promise for future commits. Invariant kept
by `next_step`: at every moment the store's promise holds for all commits acknowledged so far and
the primary's setting enforces it for the commits to come. So whatever moment the primary dies,
promoting by the store's promise (`may_promote`) never loses an acknowledged commit.

`synchronous_mode: on` with n standbys is the promise (n, V) with |V| = n; `quorum` is (k, V)
with |V| >= k.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pgwarden.core.model import NO_SYNC, ClusterView, ReplicationStat, SyncConfig, SyncState
from pgwarden.core.settings import ClusterSettings, SyncMode

WILDCARD = "*"  # only read back from a server set by hand or by an older pgwarden

# Strict mode with no standby that may be synchronous waits for the members that could be one,
# by name (`strict_wait`). Not "*": PostgreSQL takes any walsender for it, a logical
# subscriber's too, and would acknowledge commits that no standby has. With no such member, this
# name, which no member can have (member names are [A-Za-z0-9_.-]): commits wait until one joins.
NO_STANDBY = "pgwarden: no standby"


@dataclass(frozen=True)
class Promise:
    quorum: int
    members: frozenset[str]

    @property
    def empty(self) -> bool:
        return self.quorum == 0 or not self.members


NO_PROMISE = Promise(0, frozenset())


def enforces(pg: SyncConfig, promise: Promise) -> bool:
    """Does waiting for `pg` guarantee `promise` for each new commit? Every set of pg.quorum
    members of pg.members must contain promise.quorum members of promise.members."""
    if promise.empty:
        return True
    if WILDCARD in pg.members or pg.empty:
        return False
    return pg.quorum - len(pg.members - promise.members) >= promise.quorum


def implies(a: Promise, b: Promise) -> bool:
    """Is promise `b` a consequence of promise `a`?"""
    if b.empty:
        return True
    if a.empty:
        return False
    return a.quorum - len(a.members - b.members) >= b.quorum


def as_config(p: Promise) -> SyncConfig:
    return NO_SYNC if p.empty else SyncConfig(p.quorum, p.members)


@dataclass(frozen=True)
class Desired:
    promise: Promise
    pg: SyncConfig  # what the primary should wait for once the promise is in the store


def sync_peers(view: ClusterView | None, me: str) -> frozenset[str]:
    """The members other than `me` that may ever be synchronous (not tagged nosync), streaming
    now or not: what strict mode waits for when none may be chosen now."""
    if view is None:
        return frozenset()
    return frozenset(n for n, m in view.members.items() if n != me and not m.tags.nosync)


def strict_wait(peers: Iterable[str]) -> SyncConfig:
    """Strict mode with no synchronous standby: any one of `peers` by name (NO_STANDBY if none)."""
    names = frozenset(peers)
    return SyncConfig(1, names or frozenset({NO_STANDBY}))


def after_promotion(settings: ClusterSettings, stored: SyncState | None, me: str,
                    peers: Iterable[str]) -> SyncConfig:
    """What a new primary waits for from its first commit, before its HA loop manages synchronous
    replication (rules 6, 8).

    The store's promise (k, V) must keep holding for the commits the new primary acknowledges:
    as primary, `me` holds each of them itself, so it counts as one of the k when it is in V, and
    the rest must come from V's other members. Waiting for nothing while the store promises that
    another member has every commit (a leader promoting again after it demoted itself, say) would
    let that member be promoted later without them. Never the set the server may carry from an
    earlier term: that can name a dead member the promise no longer does. With nothing left to
    wait for, strict mode waits for any of `peers` (rule 8; `strict_wait`).
    """
    if stored is not None and not stored.empty:
        need = stored.quorum - (1 if me in stored.members else 0)
        if need > 0:
            return SyncConfig(need, frozenset(stored.members - {me}))
    if settings.synchronous and settings.synchronous_mode_strict:
        return strict_wait(set(peers) - {me})
    return NO_SYNC


def after_promotion_in(view: ClusterView, me: str) -> SyncConfig:
    """`after_promotion` for `me` from one read of the store."""
    return after_promotion(view.settings, view.sync, me, sync_peers(view, me))


def desired_sync(
    settings: ClusterSettings,
    eligible: Iterable[str],
    current: Promise,
    lag: Mapping[str, int],
    peers: Iterable[str],
) -> Desired:
    """What to aim for given the healthy standbys that may be synchronous.

    `eligible`: streaming from this primary, not tagged nosync. `lag`: bytes behind, to prefer
    the closest standbys. Members already promised stay first, so a healthy set does not churn.
    `peers`: every member that may ever be synchronous (`sync_peers`), what strict mode waits
    for while none is eligible.
    """
    names = sorted(set(eligible), key=lambda n: (n not in current.members, lag.get(n, 1 << 62), n))
    mode = settings.synchronous_mode
    if mode == SyncMode.OFF:
        return Desired(NO_PROMISE, NO_SYNC)
    if not names:
        if settings.synchronous_mode_strict:
            return Desired(NO_PROMISE, strict_wait(peers))
        return Desired(NO_PROMISE, NO_SYNC)
    n = settings.synchronous_node_count
    if mode == SyncMode.ON:
        chosen = frozenset(names[:n])
        p = Promise(len(chosen), chosen)
    else:
        voters = frozenset(names)
        p = Promise(min(n, len(voters)), voters)
    return Desired(p, as_config(p))


@dataclass(frozen=True)
class Step:
    """One change to make now: to the store (`store`) or to the primary (`pg`); both None = done
    or waiting for standbys to confirm."""

    store: Promise | None = None
    pg: SyncConfig | None = None
    waiting: str = ""


def confirmed(promise: Promise, stats: Iterable[ReplicationStat], since_lsn: int | None) -> bool:
    """Have at least k members of the promise flushed everything the primary acknowledged before
    its current setting took effect (so the promise holds for past commits too)?"""
    if promise.empty:
        return True
    if since_lsn is None:
        return False
    flushed = {s.name for s in stats if s.flush_lsn is not None and s.flush_lsn >= since_lsn}
    return len(flushed & promise.members) >= promise.quorum


def next_step(
    pg: SyncConfig,
    store: Promise,
    want: Desired,
    stats: Iterable[ReplicationStat],
    pg_applied_lsn: int | None,
) -> Step:
    """The single next safe change toward `want`.

    1. Weaken the store first when it names members the target drops (removal: store before pg).
    2. Make the primary enforce the target promise while still enforcing the stored one.
    3. Once enough target members confirmed, write the target promise to the store.
    4. Finally let the primary wait for exactly the target.
    """
    target = want.promise
    if store != target:
        if implies(store, target):
            return Step(store=target)
        dropped = store.members - target.members
        if dropped:
            weaker = Promise(max(0, store.quorum - len(dropped)), store.members & target.members)
            if weaker.quorum == 0:
                weaker = NO_PROMISE
            return Step(store=weaker)
        # store.members is a subset of target.members from here on.
        if not enforces(pg, target) or not enforces(pg, store):
            union = store.members | target.members
            k = max(store.quorum + len(union - store.members), target.quorum + len(union - target.members))
            return Step(pg=SyncConfig(k, union))
        stats = tuple(stats)
        if confirmed(target, stats, pg_applied_lsn):
            return Step(store=target)
        return Step(waiting=f"waiting for {', '.join(sorted(target.members))} to confirm the latest commit")
    if pg != want.pg:
        return Step(pg=want.pg)
    return Step()


def may_promote(
    me: str,
    promise: Promise,
    my_lsn: int | None,
    voter_lsns: Mapping[str, int | None],
) -> tuple[bool, str]:
    """SAFETY rule 7: may `me` be promoted under the store's promise?

    `voter_lsns`: received LSNs read this loop from other members of the promise (unreachable
    members absent). Every acknowledged commit is on at least k of N voters, so reading N - k + 1
    of them (me included) and being the newest guarantees having every acknowledged commit.
    """
    if promise.empty:
        return True, "no synchronous promise"
    if me not in promise.members:
        return False, "not a synchronous standby"
    if my_lsn is None:
        return False, "own position unknown"
    read = {n: v for n, v in voter_lsns.items() if n in promise.members and n != me and v is not None}
    needed = len(promise.members) - promise.quorum + 1
    if len(read) + 1 < needed:
        return False, f"read {len(read) + 1} of the {needed} synchronous members needed"
    ahead = sorted(n for n, v in read.items() if v is not None and v > my_lsn)
    if ahead:
        return False, f"{', '.join(ahead)} received more WAL"
    return True, "newest of the synchronous members read"


def may_promote_stored(
    me: str,
    stored: SyncState | None,
    synchronous: bool,
    my_lsn: int | None,
    voter_lsns: Mapping[str, int | None],
) -> tuple[bool, str]:
    """`may_promote` from the store's record as it is, for a cluster in a synchronous mode or not.

    An empty set recorded by a leader in a synchronous mode does not mean "anyone": the set goes
    empty when the last synchronous standby left (non-strict fallback to async, the strict
    wildcard, or `next_step` weakening the set before a replacement confirms), and commits it
    acknowledged before that may be on no live standby. Only that leader surely has them all.
    """
    if stored is None or stored.empty:
        if synchronous and stored is not None and stored.leader not in (None, me):
            return False, f"the synchronous set is empty: only {stored.leader} has every acknowledged commit"
        return True, "no synchronous promise"
    return may_promote(me, Promise(stored.quorum, stored.members), my_lsn, voter_lsns)


def may_take_over(name: str, stored: SyncState | None, synchronous: bool) -> bool:
    """Could `name` ever pass `may_promote_stored` (its membership part)? For hand-overs: the leader
    must not give the lease to a member that is not allowed to promote."""
    if stored is None or stored.empty:
        return not (synchronous and stored is not None and stored.leader not in (None, name))
    return name in stored.members
