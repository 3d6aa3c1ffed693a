"""An in-memory backend of the store port for tests: real compare-and-swap on revisions, leases
owned by the instance that took them and expiring on the monotonic clock (or the one passed as
`clock`: the scenario tests' simulated time, which never call `wait_for_change`: it blocks in
real time until the clock passes its deadline), the watch rules of
`store.base`, and a switch (`down`) that makes every call fail as unreachable. Instances that
share a `MemServer` see each other's keys, as instances of a real backend share a server."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from pgwarden.store.base import (
    ANY,
    KV,
    AnyVersion,
    Entry,
    Layout,
    StoreUnavailable,
    Version,
    check_also,
    check_ttl_put,
)
from pgwarden.store.documents import LAYOUT

_CHANGES_KEPT = 4096


@dataclass(frozen=True)
class _Record:
    value: str
    version: int
    owner: int = 0  # the instance whose lease holds the key; 0: no lease
    expires: float | None = None  # monotonic


@dataclass(frozen=True)
class _Change:
    revision: int
    cluster: str
    origin: int  # the instance that made it; 0: expiry
    counts: bool  # news to other instances (see `store.base`)


class MemServer:
    """The keys every `MemKV` on this server shares, and the log of changes they wait on."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.data: dict[str, dict[str, _Record]] = {}
        self.revision = 0
        self.changes: list[_Change] = []
        self.forgotten = 0  # changes up to this revision were dropped from `changes`

    def keys(self, cluster: str) -> dict[str, _Record]:
        return self.data.setdefault(cluster, {})

    def record(self, cluster: str, origin: int, counts: bool) -> int:
        """A new revision for a change; wakes every waiter."""
        self.revision += 1
        self.changes.append(_Change(self.revision, cluster, origin, counts))
        if len(self.changes) > _CHANGES_KEPT:
            dropped = self.changes[: len(self.changes) - _CHANGES_KEPT // 2]
            self.forgotten = dropped[-1].revision
            del self.changes[: len(dropped)]
        self.cond.notify_all()
        return self.revision

    def expire(self, now: float) -> float | None:
        """Delete the keys whose lease ran out; when the next one runs out, if any."""
        nearest: float | None = None
        for cluster, keys in self.data.items():
            for key, r in list(keys.items()):
                if r.expires is None:
                    continue
                if r.expires <= now:
                    del keys[key]
                    self.record(cluster, 0, True)
                elif nearest is None or r.expires < nearest:
                    nearest = r.expires
        return nearest


class MemKV(KV):
    _ids = itertools.count(1)

    def __init__(self, cluster: str, server: MemServer | None = None, layout: Layout = LAYOUT,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cluster = cluster
        self.clock = clock
        self.down = False
        self._server = server if server is not None else MemServer()
        self._layout = layout
        self._id = next(self._ids)
        self._seen = 0
        self._closed = False

    def _keys(self) -> dict[str, _Record]:
        """This cluster's keys, once expired leases are gone (call with the server's lock held)."""
        if self.down:
            raise StoreUnavailable("the in-memory store is down")
        self._server.expire(self.clock())
        return self._server.keys(self.cluster)

    def _write(self, key: str, value: str, owner: int = 0, ttl: float | None = None) -> None:
        keys = self._keys()
        counts = key not in keys or not self._layout.in_dir(key)
        rev = self._server.record(self.cluster, self._id, counts)
        expires = self.clock() + ttl if ttl is not None else None
        keys[key] = _Record(value, rev, owner, expires)

    def _remove(self, key: str) -> None:
        del self._keys()[key]
        self._server.record(self.cluster, self._id, True)

    # -- reading -------------------------------------------------------------------------------
    def read(self, timeout: float) -> dict[str, Entry]:
        with self._server.cond:
            keys = self._keys()
            self._seen = self._server.revision
            return {k: Entry(r.value, str(r.version)) for k, r in keys.items()}

    def _pending(self) -> bool:
        s = self._server
        return self._seen < s.forgotten or any(
            c.revision > self._seen and c.cluster == self.cluster and c.origin != self._id and c.counts
            for c in s.changes
        )

    def wait_for_change(self, timeout: float) -> bool:
        deadline = self.clock() + timeout
        s = self._server
        with s.cond:
            while True:
                if self.down:
                    raise StoreUnavailable("the in-memory store is down")
                now = self.clock()
                nearest = s.expire(now)
                if self._closed:
                    return False
                if self._pending():
                    self._seen = s.revision
                    return True
                left = deadline - now
                if left <= 0:
                    return False
                s.cond.wait(min(left, nearest - now) if nearest is not None else left)

    # -- writing -------------------------------------------------------------------------------
    def put(self, key: str, value: str, version: Version, timeout: float, ttl: float | None = None) -> bool:
        check_ttl_put(version, ttl)
        with self._server.cond:
            current = self._keys().get(key)
            if version is None and current is not None:
                return False
            if isinstance(version, str) and (current is None or str(current.version) != version):
                return False
            if ttl is not None:
                self._write(key, value, self._id, ttl)
            else:
                self._write(key, value)
            return True

    def delete(self, key: str, version: str | AnyVersion, timeout: float) -> bool:
        with self._server.cond:
            current = self._keys().get(key)
            if current is None or (version is not ANY and str(current.version) != version):
                return False
            self._remove(key)
            return True

    # -- leases --------------------------------------------------------------------------------
    def acquire(self, key: str, value: str, ttl: float, timeout: float, strict: bool = True) -> bool:
        with self._server.cond:
            if key in self._keys():
                return False
            self._write(key, value, self._id, ttl)
            return True

    def renew(
        self, key: str, value: str, ttl: float, timeout: float, strict: bool = True, adopt: bool = False
    ) -> bool:
        with self._server.cond:
            keys = self._keys()
            current = keys.get(key)
            if current is None or current.value != value:
                return False
            if current.owner != self._id:
                if not adopt:
                    return False
                self._write(key, value, self._id, ttl)  # onto our lease, under the same lock
                return True
            keys[key] = replace(current, expires=self.clock() + ttl)  # not a change
            return True

    def take_over(
        self, key: str, value: str, version: str, ttl: float, timeout: float,
        also: Mapping[str, tuple[str, Version]] | None = None,
    ) -> bool:
        others = check_also(key, also)
        with self._server.cond:  # one lock: all the compares and writes are one step
            keys = self._keys()
            current = keys.get(key)
            if current is None or str(current.version) != version:
                return False
            for k, (_, v) in others.items():
                other = keys.get(k)
                if (other is not None) if v is None else (other is None or str(other.version) != v):
                    return False
            self._write(key, value, self._id, ttl)
            for k, (v_new, _) in others.items():
                self._write(k, v_new)
            return True

    def release(self, key: str, value: str, timeout: float) -> bool:
        with self._server.cond:
            current = self._keys().get(key)
            if current is None or current.value != value:
                return False
            self._remove(key)
            return True

    def close(self) -> None:
        with self._server.cond:
            self._closed = True
            self._server.cond.notify_all()
