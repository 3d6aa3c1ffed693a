"""The store as the agent, the REST API and the tools use it: the cluster's documents (leader lease,
init lock, members, settings, synchronous promise, requests, history) written once, above any
backend's `KV` (see `store.base` for the port's guarantees, `store.documents` for the layout).

Compare-and-swap writes (`set_settings`, `set_sync`, `set_failover`) take the token their
document had in the last `snapshot`; `None` or `""` (what `snapshot` reports for absent settings)
means create-only. A lost compare-and-swap returns False; no call raises on a lost race.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from pgwarden.config.schema import ClusterSettings
from pgwarden.core.model import ClusterView, FailoverRequest, HistoryEntry, MemberInfo, SiteState, SyncState
from pgwarden.store.base import ANY, KV, Entry
from pgwarden.store.documents import (
    CONFIG,
    FAILOVER,
    FAILSAFE,
    HISTORY,
    INIT_LOCK,
    INITIALIZE,
    LEADER,
    OPTIME,
    SITE,
    SYNC,
    dump_failover,
    dump_failsafe,
    dump_history,
    dump_member,
    dump_settings,
    dump_site,
    dump_sync,
    member_key,
    parse_view,
)


class ClusterStore:
    """One cluster's documents in one backend."""

    def __init__(self, kv: KV, clock: Callable[[], float] = time.monotonic) -> None:
        self.kv = kv
        self.cluster = kv.cluster
        self.clock = clock  # monotonic; the scenario tests pass a simulated one
        self._dumped: tuple[MemberInfo, str] | None = None  # the last member document and its JSON
        self._last_view: tuple[dict[str, Entry], ClusterView] | None = None  # see snapshot

    # -- reading -------------------------------------------------------------------------------
    def snapshot(self, timeout: float) -> ClusterView:
        """One consistent read of everything under the cluster's key. The view is a function of
        the read's keys, values and versions alone: a read that returned exactly what the last
        one did gives the last (immutable) view back instead of parsing it again (an idle
        cluster's every loop, issue 16)."""
        entries = self.kv.read(timeout)
        last = self._last_view
        if last is not None and last[0] == entries:
            return last[1]
        view = parse_view(entries, self.cluster)
        self._last_view = (dict(entries), view)
        return view

    def wait_for_change(self, timeout: float) -> bool:
        """Block up to `timeout` for a change since the last snapshot that is news to this
        instance (see `KV.wait_for_change`). True if one happened."""
        return self.kv.wait_for_change(timeout)

    @property
    def take_over_agreed(self) -> bool:
        """The confirmed-crash fast path may use `take_over_leader` here (`KV.take_over_agreed`)."""
        return self.kv.take_over_agreed

    @property
    def interruptible(self) -> bool:
        """`interrupt` ends a `wait_for_change` early (`KV.interrupt`)."""
        return self.kv.interruptible

    def interrupt(self) -> None:
        self.kv.interrupt()

    # -- bootstrap -----------------------------------------------------------------------------
    def take_init_lock(self, name: str, ttl: float, timeout: float) -> bool:
        """Become the one member that bootstraps: create-only, on a lease of `ttl`. Calling it
        again while holding the lock renews it, so a long bootstrap can keep the lock. A backend
        that grants only shorter leases still takes it (and warns): the lock only spares a
        wasted second bootstrap; `set_initialized` being create-only decides which one counts."""
        deadline = self.clock() + timeout
        if self.kv.renew(INIT_LOCK, name, ttl, timeout, strict=False):
            return True
        left = max(0.0, deadline - self.clock())
        return self.kv.acquire(INIT_LOCK, name, ttl, left, strict=False)

    def set_initialized(self, system_id: str, timeout: float) -> bool:
        """Record the cluster's system identifier (create-only)."""
        return self.kv.put(INITIALIZE, system_id, None, timeout)

    def release_init_lock(self, name: str, timeout: float) -> None:
        self.kv.release(INIT_LOCK, name, timeout)

    # -- the leader lease ----------------------------------------------------------------------
    def acquire_leader(self, name: str, ttl: float, timeout: float) -> bool:
        return self.kv.acquire(LEADER, name, ttl, timeout)

    def renew_leader(self, name: str, ttl: float, timeout: float, adopt: bool = False) -> bool:
        """True only if the store confirmed during this call that the key is still ours, until at
        least send time + `ttl` (SAFETY rule 2). `adopt`: a key naming us that a previous run of
        this agent holds becomes ours, atomically (`KV.renew`; SAFETY rule 5)."""
        return self.kv.renew(LEADER, name, ttl, timeout, adopt=adopt)

    def take_over_leader(self, name: str, leader_token: str, sync: SyncState | None, sync_token: str | None,
                         ttl: float, timeout: float) -> bool:
        """The leader key, if still at `leader_token` (whoever holds it, however long its lease
        still runs), becomes `name`'s on a new lease of `ttl`, and the synchronous-state document
        is rewritten in the same atomic step: `sync`, compared on `sync_token` (None or "": the
        document must be absent, and is created). The rewrite changes the document's token even
        if `sync` equals what is stored, so the old leader can no longer shrink the synchronous
        set with the token it read. `sync` None: the document is neither compared nor written
        (`sync_token` is ignored). False, changing nothing, if either compare fails or the
        leader key is gone (this never creates it: `acquire_leader` does). Only for SAFETY rule
        16's confirmed crash; the caller passes tokens from one snapshot (`KV.take_over`)."""
        also = None if sync is None else {SYNC: (dump_sync(sync), sync_token or None)}
        return self.kv.take_over(LEADER, name, leader_token, ttl, timeout, also=also)

    def release_leader(self, name: str, timeout: float) -> bool:
        """Delete the leader key if (and only if) `name` holds it."""
        return self.kv.release(LEADER, name, timeout)

    # -- members -------------------------------------------------------------------------------
    def publish_member(self, info: MemberInfo, ttl: float, timeout: float) -> None:
        """Write our member key; it lapses `ttl` after the last publish."""
        if self._dumped is None or self._dumped[0] != info:  # a document a loop: JSON once
            self._dumped = (info, dump_member(info))
        self.kv.put(member_key(info.name), self._dumped[1], ANY, timeout, ttl=ttl)

    def delete_member(self, name: str, timeout: float) -> None:
        self.kv.delete(member_key(name), ANY, timeout)

    # -- cluster-wide state (compare-and-swap) --------------------------------------------------
    def set_settings(self, settings: ClusterSettings, token: str | None, timeout: float) -> bool:
        return self.kv.put(CONFIG, dump_settings(settings), token or None, timeout)

    def set_sync(self, state: SyncState, token: str | None, timeout: float) -> bool:
        return self.kv.put(SYNC, dump_sync(state), token or None, timeout)

    def set_failover(self, request: FailoverRequest, token: str | None, timeout: float) -> bool:
        return self.kv.put(FAILOVER, dump_failover(request), token or None, timeout)

    def set_failsafe_members(self, members: frozenset[str], token: str | None, timeout: float) -> bool:
        """The failsafe set (rule 17): compare-and-swap on `token` (None or "": create-only)."""
        return self.kv.put(FAILSAFE, dump_failsafe(members), token or None, timeout)

    def clear_failover(self, timeout: float) -> None:
        self.kv.delete(FAILOVER, ANY, timeout)

    def set_history(self, history: tuple[HistoryEntry, ...], timeout: float) -> None:
        self.kv.put(HISTORY, dump_history(history), ANY, timeout)

    def set_site(self, site: SiteState, token: str | None, timeout: float) -> bool:
        """The site document (epoch, other sites' API URLs); `token` from the last snapshot."""
        return self.kv.put(SITE, dump_site(site), token or None, timeout)

    def set_optime(self, lsn: int, timeout: float) -> None:
        self.kv.put(OPTIME, str(int(lsn)), ANY, timeout)

    # -- shutting down -------------------------------------------------------------------------
    def close(self) -> None:
        """Disconnect; leases are left to run out (a stopped agent never gives up leadership
        implicitly)."""
        self.kv.close()
