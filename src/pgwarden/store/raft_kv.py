"""The replicated state machine of the raft store: a key-value map with compare-and-swap versions
and TTL leases, applied in log order on every member of the raft group (a pysyncobj consumer).

Rules, each needed for the lease guarantee of `pgwarden.store.base` (SAFETY rule 2):

* Every command is deterministic: it carries everything it needs (value, owner, ttl, condition)
  and reads no clock, so every member computes the same map from the same log.
* Expiry is *decided* outside the log, by the raft leader, and *applied* through it: the leader
  submits `expire(key, touched)`, which deletes the key only if nothing touched it since
  (`touched` is the revision of the last write or renewal). A renewal committed before the expire
  wins; one committed after finds the key gone and fails, so its sender fences.
* Each member measures a key's age from the moment *it* applied the key's last touch, on its own
  monotonic clock (`_stamps`, never replicated). The lease holder sent the command before any
  member could apply it, so on every member that moment is at or after the holder's send time:
  whichever member is leader when the key ages out, `stamp + ttl >= sent_at + ttl`. A new leader
  therefore needs no special step after an election; a member that replays its journal or loads
  a dump stamps everything "now", which only delays expiry (the safe direction).
* A take-over (`KV.take_over`, SAFETY rule 16) is one `take_over` command carrying every key it
  compares and writes, so no member ever applies half of it. A member running a pgwarden too old
  to know the op skips it (as any unknown op): run one version across the group before any
  agent may take over.
* Requests carry an id (`rid`); a retried request that was already applied returns the first
  result instead of applying twice, so callers may retry when pysyncobj cannot say whether a
  command made it into the log.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from pysyncobj import SyncObjConsumer, replicated  # type: ignore[import-untyped]

# How many request ids are remembered for deduplication; far more than can be in flight.
_DONE_KEEP = 4096
# A submitted expire that has not been applied after this long is submitted again.
_EXPIRE_RESUBMIT = 1.0

Result = tuple[bool, int]  # (condition held and the command took effect, revision of the write)


@dataclass(frozen=True)
class Entry:
    value: str
    version: int  # revision of the last value write: the compare-and-swap token
    touched: int  # revision of the last write or renewal: what an expire must still see
    owner: str = ""  # lease owner (one token per RaftKV instance); "" for keys without a lease
    ttl: float | None = None


@dataclass(frozen=True)
class Change:
    """A command that took effect, as listeners (waiting RaftKV instances) see it."""

    cluster: str
    key: str
    revision: int
    origin: str  # the RaftKV instance that asked for it ("" for expiry)
    op: str  # put | renew | delete | expire
    created: bool  # a put that created the key (as opposed to overwriting it)


def command(
    op: str, cluster: str, key: str, *, rid: str, origin: str = "", value: str = "", owner: str = "",
    ttl: float | None = None, cond: str = "any", arg: int | str = 0,
    also: list[list[Any]] | None = None,
) -> dict[str, Any]:
    """A command as it travels through the log: primitives only, so journals and dumps stay
    readable by other pgwarden versions (pickled classes would tie them to this module).

    cond: any | absent | version (arg = version) | value (arg = value) | held (owner and value).
    op `take_over` (put of `key` on `cond`, owner and ttl as given) also writes, in the same
    step, each `also` entry `[key, value, version or None (absent)]`, if all of them hold."""
    cmd: dict[str, Any] = {"op": op, "cluster": cluster, "key": key, "rid": rid, "origin": origin,
                           "value": value, "owner": owner, "ttl": ttl, "cond": cond, "arg": arg}
    if also is not None:
        cmd["also"] = also
    return cmd


def _holds(entry: Entry | None, cmd: dict[str, Any]) -> bool:
    cond = cmd["cond"]
    if cond == "any":
        return True
    if cond == "absent":
        return entry is None
    if entry is None:
        return False
    if cond == "version":
        return entry.version == int(cmd["arg"])
    if cond == "value":
        return bool(entry.value == cmd["arg"])
    if cond == "held":
        return bool(cmd["owner"]) and entry.owner == cmd["owner"] and entry.value == cmd["value"]
    return False


class ReplicatedKV(SyncObjConsumer):  # type: ignore[misc]
    """The map, keyed by (cluster, key). Mutated only by `execute` on pysyncobj's tick thread;
    read from any thread under `_lock`."""

    def __init__(self) -> None:
        # Local, never replicated: SyncObjConsumer serialises only attributes set after its
        # __init__, so these come first.
        self._lock = threading.Lock()
        self._stamps: dict[tuple[str, str], float] = {}
        self._listeners: list[Callable[[Change], None]] = []
        self._expiring: dict[tuple[str, str, int], float] = {}
        super().__init__()
        # Replicated state.
        self._data: dict[str, dict[str, Entry]] = {}
        self._revision = 0
        self._done: dict[str, Result] = {}

    # -- the one replicated command ------------------------------------------------------------
    @replicated  # type: ignore[untyped-decorator]
    def execute(self, cmd: dict[str, Any]) -> Result | None:
        if cmd["op"] == "noop":
            return (True, self._revision)  # a read barrier: applying it is the point
        rid = cmd["rid"]
        with self._lock:
            done = self._done.get(rid)
            if done is not None:
                return done
            if cmd["op"] == "take_over":
                result, changes = self._take_over(cmd)
            else:
                result, change = self._apply(cmd)
                changes = [change] if change is not None else []
            self._done[rid] = result
            if len(self._done) > _DONE_KEEP:
                del self._done[next(iter(self._done))]  # dicts keep insertion order: same on all
            listeners = list(self._listeners) if changes else []
        for change in changes:
            for listener in listeners:
                listener(change)
        return result

    def _take_over(self, cmd: dict[str, Any]) -> tuple[Result, list[Change]]:
        """All or nothing: the key (which must exist: never created here) and every also-key
        compared first, then all written at one revision (so every also-key's version changes,
        same value or not); the key owned by `owner` with `ttl`, stamped now."""
        cluster, key = cmd["cluster"], cmd["key"]
        keys = self._data.get(cluster, {})
        entry = keys.get(key)
        also = [(str(k), str(v), None if t is None else int(t)) for k, v, t in cmd.get("also") or ()]
        if entry is None or not _holds(entry, cmd):
            return (False, self._revision), []
        for k, _, version in also:
            other = keys.get(k)
            if (other is not None) if version is None else (other is None or other.version != version):
                return (False, self._revision), []
        self._revision += 1
        rev = self._revision
        keys[key] = Entry(cmd["value"], rev, rev, cmd["owner"], cmd["ttl"])
        self._stamp(cluster, key, keys[key])
        changes = [Change(cluster, key, rev, cmd["origin"], "put", False)]
        for k, value, _ in also:
            changes.append(Change(cluster, k, rev, cmd["origin"], "put", k not in keys))
            keys[k] = Entry(value, rev, rev)
            self._stamps.pop((cluster, k), None)
        return (True, rev), changes

    def _apply(self, cmd: dict[str, Any]) -> tuple[Result, Change | None]:
        op, cluster, key = cmd["op"], cmd["cluster"], cmd["key"]
        if op not in ("put", "renew", "delete", "expire"):
            return (False, self._revision), None  # from a newer pgwarden: skip, identically everywhere
        keys = self._data.get(cluster, {})
        entry = keys.get(key)
        if op == "expire":
            if entry is None or entry.touched != int(cmd["arg"]):
                return (False, self._revision), None
        elif not _holds(entry, cmd):
            return (False, self._revision), None
        if op in ("delete", "expire") and entry is None:
            return (False, self._revision), None
        self._revision += 1
        rev = self._revision
        created = False
        if op == "put":
            created = entry is None
            keys[key] = Entry(cmd["value"], rev, rev, cmd["owner"], cmd["ttl"])
            self._data[cluster] = keys
            self._stamp(cluster, key, keys[key])
        elif op == "renew":
            assert entry is not None
            keys[key] = replace(entry, touched=rev, ttl=cmd["ttl"])
            self._stamp(cluster, key, keys[key])
        else:  # delete, expire
            del keys[key]
            self._stamps.pop((cluster, key), None)
            if not keys:
                self._data.pop(cluster, None)
        return (True, rev), Change(cluster, key, rev, cmd["origin"], op, created)

    def _stamp(self, cluster: str, key: str, entry: Entry) -> None:
        if entry.ttl is None:
            self._stamps.pop((cluster, key), None)
        else:
            self._stamps[(cluster, key)] = time.monotonic()

    # -- reading (any thread) ------------------------------------------------------------------
    def read(self, cluster: str) -> tuple[dict[str, Entry], int]:
        """The cluster's keys and the revision they are current at, in one consistent read."""
        with self._lock:
            return dict(self._data.get(cluster, {})), self._revision

    def revision(self) -> int:
        with self._lock:
            return self._revision

    def add_listener(self, listener: Callable[[Change], None]) -> None:
        with self._lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[Change], None]) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    # -- expiry (decided by the raft leader, on the tick thread) -------------------------------
    def due(self, now: float) -> list[tuple[str, str, int]]:
        """(cluster, key, touched) of keys whose lease ran out on this member's clock and for
        which no expire is in flight."""
        out: list[tuple[str, str, int]] = []
        with self._lock:
            self._expiring = {k: t for k, t in self._expiring.items() if now - t < _EXPIRE_RESUBMIT}
            for (cluster, key), stamp in self._stamps.items():
                entry = self._data.get(cluster, {}).get(key)
                if entry is None or entry.ttl is None or now - stamp <= entry.ttl:
                    continue
                ident = (cluster, key, entry.touched)
                if ident not in self._expiring:
                    self._expiring[ident] = now
                    out.append(ident)
        return out

    # -- log compaction: only primitives go into the dump --------------------------------------
    def _serialize(self) -> dict[str, Any]:
        with self._lock:
            data = {c: {k: (e.value, e.version, e.touched, e.owner, e.ttl) for k, e in keys.items()}
                    for c, keys in self._data.items()}
            return {"data": data, "revision": self._revision, "done": list(self._done.items())}

    def _deserialize(self, state: dict[str, Any]) -> None:
        now = time.monotonic()
        with self._lock:
            self._data = {c: {k: Entry(*t) for k, t in keys.items()} for c, keys in state["data"].items()}
            self._revision = int(state["revision"])
            self._done = {rid: (bool(r[0]), int(r[1])) for rid, r in state["done"]}
            # When the keys were last renewed is unknown here: count their ttl from now.
            self._stamps = {(c, k): now for c, keys in self._data.items()
                            for k, e in keys.items() if e.ttl is not None}
            self._expiring = {}
