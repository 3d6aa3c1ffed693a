"""The store port: a key-value store with versions, leases and a watch, which every coordination
service (etcd, ZooKeeper, the agents' own raft group, the tests' in-memory one) implements as `KV`.
The cluster's documents (leader key, members, settings, ...) are written once above it, in
`store.cluster.ClusterStore`.

What every `KV` must guarantee:

* Every call takes `timeout` (seconds) and either finishes within it or raises
  `StoreUnavailable`. The runner clips `timeout` to the time left on its lease (SAFETY rule 15).
* `read` is one consistent read of every key of the cluster, each with its version: an opaque
  token that changes whenever the value is written, compared by `put` and `delete`.
* A write that loses its compare-and-swap returns False; nothing raises on a lost race (there is
  no conflict exception: every caller re-reads and re-decides, or answers 409 itself).
* `acquire` is a compare-and-swap on "no such key": it succeeds for at most one caller while the
  key exists, and the key then expires `ttl` seconds after the last renewal the store processed,
  unless renewed or released. The lease belongs to this `KV` instance: another instance cannot
  renew it, even with the same value, except by adopting it (below).
* `renew` returns True only if the store confirmed, during this call, that the key is still ours
  and its expiry was pushed to at least (time the call was sent) + ttl. The runner's deadline is
  computed from the *send* time, so a late answer never extends it (SAFETY rule 2).
* `renew(..., adopt=True)` also takes over a key that holds exactly `value` on a lease this
  instance does not know (left by a previous run of the same agent: SAFETY rule 5's "take the
  lease at once"). It moves the key onto a new lease of this instance in one atomic step,
  conditioned on the key still being that same `value` (the same incarnation of it, where the
  backend can tell); the key is never absent in between, so no other instance can acquire it
  meanwhile, and the previous holder's renewals fail from then on. The deadline guarantee is the
  same as for a plain renewal. False, changing nothing, if the key is gone or holds another
  value. The agent asks for it only while it holds no lease of its own and its previous run on
  this node did (see `agent.executor`).
* `take_over` replaces a leased key that is still at the version a `read` saw (whoever's lease
  holds it, however long that lease still runs) with our value on a new lease of this instance,
  and in the same atomic step writes other keys compared on their own versions (`also`). It is
  the confirmed-crash fast path of SAFETY rule 16: the decision that the old holder is gone is
  the caller's; the store only guarantees that the step is one compare-and-swap over all those
  keys (all or nothing, False on any lost compare), that the key is never absent in between
  (nobody can `acquire` it meanwhile), that it never creates the key (False if it is gone), that
  the key lasts at least send time + ttl and is then this instance's to renew and release while
  the previous holder's `renew` fails from then on (and its `release`, which compares the value,
  since the new value names another holder), and that every `also` key gets a new version even
  if its value is unchanged (so tokens others read of it stop matching).
* `close` releases nothing: a stopped or crashed agent must never give up a lease implicitly;
  its keys lapse `ttl` after its last renewal.
* `wait_for_change` blocks until something under the cluster changes (or `timeout`), so replicas
  react to a released or expired leader key at once instead of on their next poll. What counts:
  a key created or deleted (expiry included), or a new value of a key outside the layout's
  directories, written by *another* instance, since this instance's last `read` or
  `wait_for_change`. This instance's own writes, renewals, and rewrites of an existing key in a
  directory (members refreshing their key every loop) do not count. A backend may wake for more
  (changes of `quiet` keys, a lost connection): the caller re-reads, so a spurious wake only
  costs a loop; it must never miss a change that counts.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal


class StoreError(Exception):
    """Base of store failures."""


class StoreUnavailable(StoreError):
    """The store did not answer within the deadline, or refused the connection. Retry later;
    a leader that keeps seeing this must fence itself before its lease deadline."""


class _Any(enum.Enum):
    ANY = "any"


ANY: Final = _Any.ANY
"""As a `version`: write or delete whatever is there (unconditional)."""

AnyVersion = Literal[_Any.ANY]
Version = str | None | AnyVersion
"""What a write compares: a version token from `read` (compare-and-swap; a token this backend did
not hand out never matches), None (create-only), or ANY (unconditional)."""


@dataclass(frozen=True)
class Entry:
    value: str
    version: str  # opaque token, changed by every write of the value


@dataclass(frozen=True)
class Layout:
    """The keys a cluster uses, as the backends may rely on: every key is one of `keys` or
    `<dir>/<name>` for a `dir` in `dirs` (no deeper). ZooKeeper, which has no range read or
    prefix watch, reads and watches exactly these; the others read a prefix and use the layout
    only to tell a directory entry's refresh from news."""

    keys: tuple[str, ...]
    dirs: tuple[str, ...]
    quiet: frozenset[str] = frozenset()  # keys whose changes need not wake a waiter

    def in_dir(self, key: str) -> bool:
        return any(key.startswith(d + "/") for d in self.dirs)


def check_also(key: str, also: Mapping[str, tuple[str, Version]] | None) -> dict[str, tuple[str, str | None]]:
    """`take_over`'s other keys, each compared on a token or on absence (never ANY)."""
    out: dict[str, tuple[str, str | None]] = {}
    for k, (value, version) in (also or {}).items():
        if k == key:
            raise ValueError(f"take_over: {k!r} is the key taken over; it cannot also be in `also`")
        if version is ANY:
            raise ValueError(f"take_over: also-key {k!r} must be compared: pass its token (None: absent)")
        out[k] = (value, version)
    return out


def check_ttl_put(version: Version, ttl: float | None) -> None:
    """A key with a ttl is written unconditionally (it is one member's own key)."""
    if ttl is not None and version is not ANY:
        raise ValueError("put with a ttl is unconditional: pass version=ANY")


class KV(abc.ABC):
    """One cluster's keys in one coordination service. Keys are relative to the cluster
    (`leader`, `members/a`); values are text."""

    cluster: str
    # Whether every server of the store applies `take_over` alike, so the confirmed-crash fast
    # path (SAFETY rule 16) may use it. False for the agents' own raft group: a member running an
    # older pgwarden skips a command it does not know, and the group's copies of the leader key
    # would then differ (store/raft_kv.py). The fast path waits for the lease there.
    take_over_agreed: bool = True

    @abc.abstractmethod
    def read(self, timeout: float) -> Mapping[str, Entry]:
        """Every key of the cluster, in one consistent read."""

    @abc.abstractmethod
    def wait_for_change(self, timeout: float) -> bool:
        """Block up to `timeout` for a change that counts (see the module doc). True if one did."""

    # Whether `interrupt` works; a caller that must notice its own events meanwhile polls a
    # backend that cannot be interrupted with short waits instead.
    interruptible: bool = False

    def interrupt(self) -> None:
        """Make a `wait_for_change` blocked in another thread (or the next one) return now: False
        unless a change that counts is pending, which it then reports as usual. Nothing is lost:
        a change not reported stays pending for the next wait. May be called from a signal
        handler of the waiting thread. A no-op here (`interruptible` False)."""
        return

    @abc.abstractmethod
    def put(self, key: str, value: str, version: Version, timeout: float, ttl: float | None = None) -> bool:
        """Write `key` if `version` matches. With `ttl` (only with `version=ANY`): the key is held
        by this instance's lease for it and lapses `ttl` after its last put (a member's key);
        each put renews it. False only if the compare-and-swap lost."""

    @abc.abstractmethod
    def delete(self, key: str, version: str | AnyVersion, timeout: float) -> bool:
        """Delete `key` if at `version` (or whatever is there: ANY), dropping this instance's
        lease for it. True if a key was deleted."""

    @abc.abstractmethod
    def acquire(self, key: str, value: str, ttl: float, timeout: float, strict: bool = True) -> bool:
        """Create `key` on a new lease of `ttl`, if it does not exist. `strict`: the key must
        last `ttl` after its last renewal (SAFETY rule 2), so a backend that can only grant a
        shorter lease raises StoreError; otherwise (the init lock) it takes what it can get and
        warns."""

    @abc.abstractmethod
    def renew(
        self, key: str, value: str, ttl: float, timeout: float, strict: bool = True, adopt: bool = False
    ) -> bool:
        """Confirm `key` is `value` on this instance's lease and push its expiry to at least
        send time + `ttl` (see the module doc). A changed `ttl` moves the key to a lease of the
        new length within this call. False if the key is gone or not ours. `adopt`: a key that
        is `value` on a lease this instance does not hold becomes ours (see the module doc)."""

    @abc.abstractmethod
    def take_over(
        self, key: str, value: str, version: str, ttl: float, timeout: float,
        also: Mapping[str, tuple[str, Version]] | None = None,
    ) -> bool:
        """Replace `key`, if it is still at `version` (a token from `read`; whoever's lease holds
        it, however long that lease still runs), with `value` on a new lease of this instance of
        `ttl`; in the same atomic step write each `also` key's new value if that key is at its
        given version (None: it must be absent, and is created; no lease on `also` keys; ANY is
        refused with ValueError: every key of a take-over is compared). All or nothing: False,
        changing nothing, if any compare fails (the key gone included: this never creates `key`,
        `acquire` does). The key is never absent in between. The key then lasts at least (send
        time + ttl), as for `acquire` (strict), and is this instance's to renew/release; the
        previous holder's renew fails from then on. Writing an `also` key with the same value it
        already had still changes its version (the point is to invalidate tokens others read).
        See the module doc (SAFETY rule 16)."""

    @abc.abstractmethod
    def release(self, key: str, value: str, timeout: float) -> bool:
        """Delete `key` if (and only if) it is `value`, whoever's lease holds it (a restarted agent
        may release what its previous run left), and drop this instance's lease for it."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop watching and disconnect. Leases are left to run out (see the module doc)."""
