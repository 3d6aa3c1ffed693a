"""An in-memory Store for tests of the HTTP layer: real compare-and-swap on per-key revisions,
real lease expiry on a monotonic clock, and a switch to make every call fail as unreachable."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

from pgwarden.config.schema import ClusterSettings
from pgwarden.core.model import (
    ClusterView,
    FailoverRequest,
    HistoryEntry,
    LeaderKey,
    MemberInfo,
    SyncState,
)
from pgwarden.store.base import Store, StoreUnavailable


class MemStore(Store):
    def __init__(self, cluster: str = "demo") -> None:
        self.cluster = cluster
        self.down = False
        self._lock = threading.Condition()
        self._rev = 0
        # key -> (value, revision); a missing key has no entry.
        self._settings: tuple[ClusterSettings, str] | None = None
        self._sync: tuple[SyncState, str] | None = None
        self._failover: tuple[FailoverRequest, str] | None = None
        self._leader: tuple[str, str, float] | None = None  # name, revision, expires (monotonic)
        self._members: dict[str, MemberInfo] = {}
        self._history: tuple[HistoryEntry, ...] = ()
        self._optime: int | None = None
        self._initialized: str | None = None
        self._init_holder: tuple[str, float] | None = None

    # -- helpers --------------------------------------------------------------------------------
    def _check(self) -> None:
        if self.down:
            raise StoreUnavailable("memstore is down")

    def _next(self) -> str:
        self._rev += 1
        self._lock.notify_all()
        return str(self._rev)

    @staticmethod
    def _cas_ok(current: tuple[object, str] | None, token: str | None) -> bool:
        if token is None:
            return current is None
        return current is not None and current[1] == token

    def _leader_now(self) -> tuple[str, str, float] | None:
        if self._leader is not None and self._leader[2] <= time.monotonic():
            self._leader = None
        return self._leader

    # -- reading --------------------------------------------------------------------------------
    def snapshot(self, timeout: float) -> ClusterView:
        with self._lock:
            self._check()
            lead = self._leader_now()
            return ClusterView(
                initialized=self._initialized,
                init_holder=self._init_holder[0] if self._init_holder else None,
                settings=self._settings[0] if self._settings else ClusterSettings(),
                settings_token=self._settings[1] if self._settings else "",
                leader=LeaderKey(lead[0], lead[1]) if lead else None,
                members=dict(self._members),
                sync=replace(self._sync[0], token=self._sync[1]) if self._sync else None,
                failover=replace(self._failover[0], token=self._failover[1]) if self._failover else None,
                history=self._history,
                leader_lsn=self._optime,
            )

    def wait_for_change(self, timeout: float) -> bool:
        with self._lock:
            self._check()
            rev = self._rev
            self._lock.wait_for(lambda: self._rev != rev, timeout)
            return self._rev != rev

    # -- bootstrap ------------------------------------------------------------------------------
    def take_init_lock(self, name: str, ttl: float, timeout: float) -> bool:
        with self._lock:
            self._check()
            now = time.monotonic()
            if self._init_holder is not None and self._init_holder[1] > now:
                return False
            self._init_holder = (name, now + ttl)
            self._next()
            return True

    def set_initialized(self, system_id: str, timeout: float) -> bool:
        with self._lock:
            self._check()
            if self._initialized is not None:
                return False
            self._initialized = system_id
            self._next()
            return True

    def release_init_lock(self, name: str, timeout: float) -> None:
        with self._lock:
            self._check()
            if self._init_holder is not None and self._init_holder[0] == name:
                self._init_holder = None
                self._next()

    # -- lease ----------------------------------------------------------------------------------
    def acquire_leader(self, name: str, ttl: float, timeout: float) -> bool:
        with self._lock:
            self._check()
            if self._leader_now() is not None:
                return False
            self._leader = (name, self._next(), time.monotonic() + ttl)
            return True

    def renew_leader(self, name: str, ttl: float, timeout: float) -> bool:
        with self._lock:
            self._check()
            lead = self._leader_now()
            if lead is None or lead[0] != name:
                return False
            self._leader = (name, lead[1], time.monotonic() + ttl)
            return True

    def release_leader(self, name: str, timeout: float) -> bool:
        with self._lock:
            self._check()
            lead = self._leader_now()
            if lead is None or lead[0] != name:
                return False
            self._leader = None
            self._next()
            return True

    # -- members --------------------------------------------------------------------------------
    def publish_member(self, info: MemberInfo, ttl: float, timeout: float) -> None:
        # Member TTLs don't matter to the API tests; members stay until deleted.
        with self._lock:
            self._check()
            self._members[info.name] = info
            self._next()

    def delete_member(self, name: str, timeout: float) -> None:
        with self._lock:
            self._check()
            self._members.pop(name, None)
            self._next()

    # -- compare-and-swap keys ------------------------------------------------------------------
    def set_settings(self, settings: ClusterSettings, token: str | None, timeout: float) -> bool:
        with self._lock:
            self._check()
            if not self._cas_ok(self._settings, token):
                return False
            self._settings = (settings, self._next())
            return True

    def set_sync(self, state: SyncState, token: str | None, timeout: float) -> bool:
        with self._lock:
            self._check()
            if not self._cas_ok(self._sync, token):
                return False
            self._sync = (state, self._next())
            return True

    def set_failover(self, request: FailoverRequest, token: str | None, timeout: float) -> bool:
        with self._lock:
            self._check()
            if not self._cas_ok(self._failover, token):
                return False
            self._failover = (request, self._next())
            return True

    def clear_failover(self, timeout: float) -> None:
        with self._lock:
            self._check()
            self._failover = None
            self._next()

    def set_history(self, history: tuple[HistoryEntry, ...], timeout: float) -> None:
        with self._lock:
            self._check()
            self._history = history
            self._next()

    def set_optime(self, lsn: int, timeout: float) -> None:
        with self._lock:
            self._check()
            self._optime = lsn
            self._next()

    def close(self) -> None:
        pass
