"""The store port: the small set of atomic operations the HA loop needs from a coordination service.

Every backend (etcd, ZooKeeper, ...) implements `Store`. What each method must guarantee:

* Every call takes `timeout` (seconds) and either finishes within it or raises
  `StoreUnavailable`. The runner clips `timeout` to the time left on its lease (SAFETY rule 15).
* `acquire_leader` is a compare-and-swap on "no leader key": it succeeds for at most one caller
  while the key exists, and the key then expires `ttl` seconds after the last renewal the store
  processed, unless renewed or released.
* `renew_leader` returns True only if the store confirmed, during this call, that the key is still
  ours and its expiry was pushed to at least (time the call was sent) + ttl. The runner's deadline
  is computed from the *send* time, so a late answer never extends it (SAFETY rule 2).
* Writes that carry a `token` are compare-and-swap on that version; `None` means create-only.
* `snapshot` returns one consistent read (`ClusterView`) of everything under the cluster's key.
* `wait_for_change` blocks until something under the cluster's key changes (or `timeout`), so
  replicas react to a released or expired leader key at once instead of on their next poll.

Key layout (relative to `<prefix>/<cluster>/`): `initialize`, `init_lock`, `config`, `leader`,
`members/<name>`, `sync`, `failover`, `history`, `optime`. Values are JSON.
"""

from __future__ import annotations

import abc
import json
from typing import Any

from pgwarden.config.load import to_data
from pgwarden.config.schema import ClusterSettings
from pgwarden.core.model import (
    ClusterView,
    FailoverRequest,
    HistoryEntry,
    MemberInfo,
    SyncState,
)


class StoreError(Exception):
    """Base of store failures."""


class StoreUnavailable(StoreError):
    """The store did not answer within the deadline, or refused the connection. Retry later;
    a leader that keeps seeing this must fence itself before its lease deadline."""


class StoreConflict(StoreError):
    """A compare-and-swap lost: someone else changed the key first. Re-read and re-decide."""


class Store(abc.ABC):
    """One cluster's keys in one coordination service."""

    cluster: str

    # -- reading -------------------------------------------------------------------------------
    @abc.abstractmethod
    def snapshot(self, timeout: float) -> ClusterView: ...

    @abc.abstractmethod
    def wait_for_change(self, timeout: float) -> bool:
        """Block up to `timeout` for any change under the cluster key. True if one happened."""

    # -- bootstrap -----------------------------------------------------------------------------
    @abc.abstractmethod
    def take_init_lock(self, name: str, ttl: float, timeout: float) -> bool:
        """Become the one member that bootstraps (expires after `ttl` unless initialised)."""

    @abc.abstractmethod
    def set_initialized(self, system_id: str, timeout: float) -> bool:
        """Record the cluster's system identifier (create-only)."""

    @abc.abstractmethod
    def release_init_lock(self, name: str, timeout: float) -> None: ...

    # -- the leader lease ----------------------------------------------------------------------
    @abc.abstractmethod
    def acquire_leader(self, name: str, ttl: float, timeout: float) -> bool: ...

    @abc.abstractmethod
    def renew_leader(self, name: str, ttl: float, timeout: float) -> bool: ...

    @abc.abstractmethod
    def release_leader(self, name: str, timeout: float) -> bool:
        """Delete the leader key if (and only if) `name` holds it."""

    # -- members -------------------------------------------------------------------------------
    @abc.abstractmethod
    def publish_member(self, info: MemberInfo, ttl: float, timeout: float) -> None: ...

    @abc.abstractmethod
    def delete_member(self, name: str, timeout: float) -> None: ...

    # -- cluster-wide state (compare-and-swap) --------------------------------------------------
    @abc.abstractmethod
    def set_settings(self, settings: ClusterSettings, token: str | None, timeout: float) -> bool: ...

    @abc.abstractmethod
    def set_sync(self, state: SyncState, token: str | None, timeout: float) -> bool: ...

    @abc.abstractmethod
    def set_failover(self, request: FailoverRequest, token: str | None, timeout: float) -> bool: ...

    @abc.abstractmethod
    def clear_failover(self, timeout: float) -> None: ...

    @abc.abstractmethod
    def set_history(self, history: tuple[HistoryEntry, ...], timeout: float) -> None: ...

    @abc.abstractmethod
    def set_optime(self, lsn: int, timeout: float) -> None: ...

    @abc.abstractmethod
    def close(self) -> None: ...


# -- JSON encodings shared by every backend, so all stores hold the same documents -------------


def dump_settings(s: ClusterSettings) -> str:
    return json.dumps(to_data(s), sort_keys=True)


def dump_sync(s: SyncState) -> str:
    return json.dumps({"leader": s.leader, "members": sorted(s.members), "quorum": s.quorum})


def load_sync(raw: str, token: str) -> SyncState:
    d = json.loads(raw)
    return SyncState(d.get("leader"), frozenset(d.get("members") or ()), int(d.get("quorum", 0)), token)


def dump_failover(r: FailoverRequest) -> str:
    return json.dumps(
        {"kind": r.kind, "leader": r.leader, "candidate": r.candidate, "scheduled_at": r.scheduled_at}
    )


def load_failover(raw: str, token: str) -> FailoverRequest:
    d = json.loads(raw)
    return FailoverRequest(d.get("kind", "failover"), d.get("leader"), d.get("candidate"),
                           d.get("scheduled_at"), token)


def dump_history(h: tuple[HistoryEntry, ...]) -> str:
    return json.dumps(
        [{"timeline": e.timeline, "switch_lsn": e.switch_lsn, "reason": e.reason, "at": e.at,
          "new_leader": e.new_leader} for e in h]
    )


def load_history(raw: str) -> tuple[HistoryEntry, ...]:
    out: list[HistoryEntry] = []
    for d in json.loads(raw):
        out.append(HistoryEntry(int(d["timeline"]), int(d["switch_lsn"]), str(d.get("reason", "")),
                                d.get("at"), d.get("new_leader")))
    return tuple(out)


def dump_member(m: MemberInfo) -> str:
    return json.dumps(m.to_dict(), sort_keys=True)


def load_member(raw: str) -> MemberInfo:
    d: dict[str, Any] = json.loads(raw)
    return MemberInfo.from_dict(d)
