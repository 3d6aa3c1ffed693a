"""The etcd v3 backend of the store port, spoken as JSON over etcd's gRPC gateway with urllib3.

Why not a client library: every call must end within its own deadline (SAFETY rule 15: the runner
clips each call's timeout to the lease it has left), which urllib3 gives us directly with
`Timeout(total=...)` and retries off; the gateway needs no grpc/protobuf dependency; and the
`etcd3` PyPI client is unmaintained since 2020 and pins an old protobuf.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pgwarden.config.errors import ConfigError
from pgwarden.config.load import parse_stored_settings
from pgwarden.config.schema import ClusterSettings
from pgwarden.core.model import (
    ClusterView,
    FailoverRequest,
    HistoryEntry,
    LeaderKey,
    MemberInfo,
    SyncState,
)
from pgwarden.store.base import (
    Store,
    StoreError,
    StoreUnavailable,
    dump_failover,
    dump_history,
    dump_member,
    dump_settings,
    dump_sync,
    load_failover,
    load_history,
    load_member,
    load_sync,
)
from pgwarden.store.etcd_gateway import (
    _NOT_FOUND,
    EtcdRequestError,
    _absent,
    _b64,
    _delete,
    _Gateway,
    _int,
    _lease_is,
    _mod_is,
    _put,
    _range_end,
    _unb64,
    _value_is,
)
from pgwarden.store.etcd_watch import EtcdWatch

log = logging.getLogger(__name__)


def _lease_seconds(ttl: float) -> int:
    # etcd TTLs are whole seconds; rounding up keeps the key at least as long as asked.
    return max(1, math.ceil(ttl))


@dataclass(frozen=True)
class _Lease:
    id: int
    ttl: int  # seconds asked for (to notice a changed ttl)


class EtcdStore(EtcdWatch, Store):
    """One cluster's keys in etcd (v3 API).

    Compare-and-swap tokens are the key's mod_revision as a string; `None` or `""` (what
    `snapshot` reports for absent settings) means create-only.

    Leases: the leader key, the init lock and this instance's member key each hang on a lease this
    instance granted. `close()` revokes none of them: a stopped or crashed agent must never give
    up leadership implicitly; the lease simply runs out.

    `wait_for_change` counts a change as: any event under the cluster key, except writes made by
    this instance (the caller knows about them, and counting them would spin the HA loop) and
    refreshes of an existing member key (members republish every loop; joining and leaving
    count). It pairs with `snapshot`: changes already visible in the last snapshot taken through
    this instance do not count, and changes made since do, even if they happened before the call.
    """

    def __init__(self, hosts: list[str], cluster: str, prefix: str = "/pgwarden") -> None:
        self.cluster = cluster
        self.hosts = list(hosts)
        self._base = f"{prefix.rstrip('/')}/{cluster}/".encode()
        self._gw = _Gateway(self.hosts)
        self._lock = threading.Lock()  # guards the lease fields (and starting the watch)
        self._leader_lease: _Lease | None = None
        self._member_lease: _Lease | None = None
        self._member_name: str | None = None
        self._init_lease: _Lease | None = None
        self._init_watch()

    # -- keys and small helpers ----------------------------------------------------------------
    def _key(self, rel: str) -> bytes:
        return self._base + rel.encode()

    def _call(self, path: str, body: Mapping[str, Any], deadline: float) -> dict[str, Any]:
        return self._gw.call(path, body, deadline)

    def _txn(
        self,
        compare: list[dict[str, Any]],
        success: list[dict[str, Any]],
        deadline: float,
        failure: Iterable[dict[str, Any]] = (),
    ) -> tuple[bool, dict[str, Any]]:
        body: dict[str, Any] = {"compare": compare, "success": success, "failure": list(failure)}
        resp = self._call("/v3/kv/txn", body, deadline)
        ok = bool(resp.get("succeeded", False))
        changed = False
        for r in resp.get("responses", []):
            if "response_put" in r or _int(r.get("response_delete_range", {}).get("deleted")) > 0:
                changed = True
        self._note_own(resp, changed)
        return ok, resp

    def _put_plain(self, rel: str, value: str, deadline: float, lease: int = 0) -> None:
        req = _put(self._key(rel), value, lease)["request_put"]
        resp = self._call("/v3/kv/put", req, deadline)
        self._note_own(resp, True)

    def _delete_plain(self, rel: str, deadline: float) -> None:
        resp = self._call("/v3/kv/deleterange", {"key": _b64(self._key(rel))}, deadline)
        self._note_own(resp, _int(resp.get("deleted")) > 0)

    def _grant(self, ttl: int, deadline: float) -> int:
        resp = self._call("/v3/lease/grant", {"TTL": str(ttl)}, deadline)
        return _int(resp.get("ID"))

    def _keepalive(self, lease: int, deadline: float) -> int:
        """The lease's TTL after the refresh; 0 if it no longer exists."""
        resp = self._call("/v3/lease/keepalive", {"ID": str(lease)}, deadline)
        return _int(resp.get("result", {}).get("TTL"))

    def _revoke_quietly(self, lease: _Lease | None, deadline: float) -> None:
        """Best effort: a lease we fail to revoke still expires on its own."""
        if lease is None or deadline - time.monotonic() <= 0:
            return
        try:
            self._call("/v3/lease/revoke", {"ID": str(lease.id)}, deadline)
        except StoreError as e:
            log.debug("etcd: revoking lease %x: %s", lease.id, e)

    # -- reading -------------------------------------------------------------------------------
    def snapshot(self, timeout: float) -> ClusterView:
        deadline = time.monotonic() + timeout
        resp = self._call(
            "/v3/kv/range", {"key": _b64(self._base), "range_end": _b64(_range_end(self._base))}, deadline
        )
        revision = _int(resp.get("header", {}).get("revision"))
        with self._cond:
            self._seen_rev = max(self._seen_rev, revision)
            self._prune()
        return self._parse(resp.get("kvs", []))

    def _parse(self, kvs: list[dict[str, Any]]) -> ClusterView:
        initialized: str | None = None
        init_holder: str | None = None
        settings = ClusterSettings()
        settings_token = ""
        leader: LeaderKey | None = None
        members: dict[str, MemberInfo] = {}
        sync: SyncState | None = None
        failover: FailoverRequest | None = None
        history: tuple[HistoryEntry, ...] = ()
        leader_lsn: int | None = None
        base = self._base.decode()
        for kv in kvs:
            rel = _unb64(kv.get("key")).removeprefix(base)
            raw = _unb64(kv.get("value"))
            token = str(_int(kv.get("mod_revision")))
            try:
                if rel == "initialize":
                    initialized = raw
                elif rel == "init_lock":
                    init_holder = raw
                elif rel == "config":
                    settings_token = token
                    try:
                        settings = parse_stored_settings(json.loads(raw), f"etcd key {base}config")
                    except (ConfigError, ValueError) as e:
                        # Keep the token so an operator's fix (a CAS write) still goes through.
                        log.warning("etcd: stored cluster settings are invalid, using defaults: %s", e)
                elif rel == "leader":
                    leader = LeaderKey(raw, token)
                elif rel.startswith("members/"):
                    m = load_member(raw)
                    members[m.name] = m
                elif rel == "sync":
                    sync = load_sync(raw, token)
                elif rel == "failover":
                    failover = load_failover(raw, token)
                elif rel == "history":
                    history = load_history(raw)
                elif rel == "optime":
                    leader_lsn = int(raw)
            except (ValueError, KeyError, TypeError) as e:
                log.warning("etcd: skipping unreadable key %s%s: %s", base, rel, e)
        return ClusterView(
            initialized=initialized,
            init_holder=init_holder,
            settings=settings,
            settings_token=settings_token,
            leader=leader,
            members=members,
            sync=sync,
            failover=failover,
            history=history,
            leader_lsn=leader_lsn,
        )

    # -- bootstrap -----------------------------------------------------------------------------
    def take_init_lock(self, name: str, ttl: float, timeout: float) -> bool:
        """Create-only, on a lease of `ttl`. Calling it again while holding the lock refreshes
        that lease, so a long bootstrap can keep the lock."""
        deadline = time.monotonic() + timeout
        key = self._key("init_lock")
        held = self._init_lease
        if held is not None and self._keepalive(held.id, deadline) > 0:
            ok, _ = self._txn([_value_is(key, name), _lease_is(key, held.id)], [], deadline)
            if ok:
                return True
        seconds = _lease_seconds(ttl)
        lease = _Lease(self._grant(seconds, deadline), seconds)
        ok, _ = self._txn([_absent(key)], [_put(key, name, lease.id)], deadline)
        if not ok:
            self._revoke_quietly(lease, deadline)
            return False
        with self._lock:
            old, self._init_lease = self._init_lease, lease
        self._revoke_quietly(old, deadline)
        return True

    def set_initialized(self, system_id: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        key = self._key("initialize")
        ok, _ = self._txn([_absent(key)], [_put(key, system_id)], deadline)
        return ok

    def release_init_lock(self, name: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        key = self._key("init_lock")
        self._txn([_value_is(key, name)], [_delete(key)], deadline)
        with self._lock:
            lease, self._init_lease = self._init_lease, None
        self._revoke_quietly(lease, deadline)

    # -- the leader lease ----------------------------------------------------------------------
    def acquire_leader(self, name: str, ttl: float, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        key = self._key("leader")
        seconds = _lease_seconds(ttl)
        lease = _Lease(self._grant(seconds, deadline), seconds)
        try:
            ok, _ = self._txn([_absent(key)], [_put(key, name, lease.id)], deadline)
        except StoreUnavailable:
            # The write may have landed without us hearing. Keep the lease so a renew_leader can
            # still confirm it; if it did not land, renewing fails its compare and says False.
            with self._lock:
                self._leader_lease = lease
            raise
        if not ok:
            self._revoke_quietly(lease, deadline)
            return False
        with self._lock:
            old, self._leader_lease = self._leader_lease, lease
        if old is not None and old.id != lease.id:
            self._revoke_quietly(old, deadline)
        return True

    def renew_leader(self, name: str, ttl: float, timeout: float) -> bool:
        """Keepalive the leader lease, then confirm the key is `name`'s on that lease.

        If `ttl` changed since acquisition, the key moves to a new lease of the new length in
        this call (a longer ttl on the old, shorter lease would break the runner's deadline)."""
        deadline = time.monotonic() + timeout
        key = self._key("leader")
        lease = self._leader_lease
        if lease is None:
            return False
        seconds = _lease_seconds(ttl)
        if lease.ttl != seconds:
            return self._move_leader(name, lease, seconds, deadline)
        if self._keepalive(lease.id, deadline) <= 0:
            self._forget_leader_lease(lease)
            return False
        ok, _ = self._txn([_value_is(key, name), _lease_is(key, lease.id)], [], deadline)
        if not ok:
            # The key is gone or not on our lease: the lease protects nothing now.
            self._forget_leader_lease(lease)
            self._revoke_quietly(lease, deadline)
        return ok

    def _move_leader(self, name: str, old: _Lease, seconds: int, deadline: float) -> bool:
        key = self._key("leader")
        new = _Lease(self._grant(seconds, deadline), seconds)
        # Serialised with expiry in raft: if the compare sees the key on our lease, nobody else
        # can have taken it in between.
        ok, _ = self._txn([_value_is(key, name), _lease_is(key, old.id)], [_put(key, name, new.id)], deadline)
        if not ok:
            self._forget_leader_lease(old)
            self._revoke_quietly(new, deadline)
            self._revoke_quietly(old, deadline)
            return False
        with self._lock:
            self._leader_lease = new
        self._revoke_quietly(old, deadline)
        return True

    def _forget_leader_lease(self, lease: _Lease) -> None:
        with self._lock:
            if self._leader_lease == lease:
                self._leader_lease = None

    def release_leader(self, name: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        key = self._key("leader")
        ok, resp = self._txn([_value_is(key, name)], [_delete(key)], deadline)
        if not ok:
            return False
        prev = resp.get("responses", [{}])[0].get("response_delete_range", {}).get("prev_kvs") or [{}]
        lease = self._leader_lease
        if lease is not None and _int(prev[0].get("lease")) == lease.id:
            self._forget_leader_lease(lease)
            self._revoke_quietly(lease, deadline)
        return True

    # -- members -------------------------------------------------------------------------------
    def publish_member(self, info: MemberInfo, ttl: float, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        seconds = _lease_seconds(ttl)
        rel = f"members/{info.name}"
        value = dump_member(info)
        lease = self._member_lease
        retired: _Lease | None = None
        if lease is not None and lease.ttl != seconds:
            retired, lease = lease, None
        if lease is not None and self._keepalive(lease.id, deadline) <= 0:
            lease = None
        for attempt in range(2):
            if lease is None:
                lease = _Lease(self._grant(seconds, deadline), seconds)
                with self._lock:
                    self._member_lease = lease
            try:
                self._put_plain(rel, value, deadline, lease.id)
                break
            except EtcdRequestError as e:
                # The lease expired between keepalive and put: take a fresh one once.
                if e.code != _NOT_FOUND or attempt:
                    raise
                lease = None
        self._member_name = info.name
        self._revoke_quietly(retired, deadline)

    def delete_member(self, name: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        self._delete_plain(f"members/{name}", deadline)
        if name == self._member_name:
            with self._lock:
                lease, self._member_lease = self._member_lease, None
            self._revoke_quietly(lease, deadline)

    # -- cluster-wide state --------------------------------------------------------------------
    def _cas(self, rel: str, value: str, token: str | None, timeout: float) -> bool:
        """Write if the key is still at `token` (its mod_revision); None or "" = create-only."""
        deadline = time.monotonic() + timeout
        key = self._key(rel)
        if token:
            try:
                cmp = _mod_is(key, int(token))
            except ValueError:
                return False  # not a token this backend handed out: it cannot match
        else:
            cmp = _absent(key)
        ok, _ = self._txn([cmp], [_put(key, value)], deadline)
        return ok

    def set_settings(self, settings: ClusterSettings, token: str | None, timeout: float) -> bool:
        return self._cas("config", dump_settings(settings), token, timeout)

    def set_sync(self, state: SyncState, token: str | None, timeout: float) -> bool:
        return self._cas("sync", dump_sync(state), token, timeout)

    def set_failover(self, request: FailoverRequest, token: str | None, timeout: float) -> bool:
        return self._cas("failover", dump_failover(request), token, timeout)

    def clear_failover(self, timeout: float) -> None:
        self._delete_plain("failover", time.monotonic() + timeout)

    def set_history(self, history: tuple[HistoryEntry, ...], timeout: float) -> None:
        self._put_plain("history", dump_history(history), time.monotonic() + timeout)

    def set_optime(self, lsn: int, timeout: float) -> None:
        self._put_plain("optime", str(int(lsn)), time.monotonic() + timeout)

    # -- shutting down -------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the watch and drop connections. Leases are left to run out (see the class doc)."""
        self._stop_watch()
        self._gw.close()
