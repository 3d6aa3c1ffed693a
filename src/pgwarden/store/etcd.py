"""The etcd v3 backend of the store port, spoken as JSON over etcd's gRPC gateway: calls on kept-alive
connections written out in store/http_conns.py, and the watch stream on a connection of its own
from the same module.

Why not a client library: every call must end within its own deadline (SAFETY rule 15: the runner
clips each call's timeout to the lease it has left), which a plain HTTP client gives us directly
with no retries behind our back; the gateway needs no grpc/protobuf dependency; and the `etcd3`
PyPI client is unmaintained since 2020 and pins an old protobuf.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pgwarden.store.base import (
    ANY,
    KV,
    AnyVersion,
    Entry,
    Layout,
    StoreError,
    StoreUnavailable,
    Version,
    check_also,
    check_ttl_put,
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
from pgwarden.tls.contexts import TlsPaths, client_context

log = logging.getLogger(__name__)


def _lease_seconds(ttl: float) -> int:
    # etcd TTLs are whole seconds; rounding up keeps the key at least as long as asked.
    return max(1, math.ceil(ttl))


@dataclass(frozen=True)
class _Lease:
    id: int
    ttl: int  # seconds asked for (to notice a changed ttl)


class EtcdKV(EtcdWatch, KV):
    """One cluster's keys in etcd (v3 API), under `<prefix>/<cluster>/`.

    Versions are the key's mod_revision as a string.

    Leases: every key this instance acquires or puts with a ttl (the leader key, the init lock,
    its member key) hangs on a lease of its own that this instance granted; a changed ttl moves
    the key to a new lease of that length. `close()` revokes none of them.

    `wait_for_change` counts a change as: any event under the cluster key, except writes made by
    this instance, refreshes of an existing key in a layout directory, and changes of the
    layout's `quiet` keys.

    A put with a ttl of the value the last read showed, on the lease we hold the key by, only
    renews the lease (see `_unchanged_and_alive`). It pairs with `read`:
    changes already visible in the last read taken through this instance do not count, and
    changes made since do, even if they happened before the call.
    """

    def __init__(self, hosts: list[str], cluster: str, layout: Layout, prefix: str = "/pgwarden",
                 credentials: tuple[str, str] | None = None, tls: TlsPaths | None = None) -> None:
        self.cluster = cluster
        self.hosts = list(hosts)
        self._layout = layout
        self._base = f"{prefix.rstrip('/')}/{cluster}/".encode()
        # store.etcd.tls: https, the server verified (host names too), our certificate presented
        self._gw = _Gateway(self.hosts, credentials, None if tls is None else client_context(tls))
        self._lock = threading.Lock()  # guards the lease table (and starting the watch)
        self._leases: dict[str, _Lease] = {}  # key -> the lease this instance holds it by
        # Leased keys as the last read saw them: key -> (value, lease). A put with a ttl of the
        # same value on the same (live) lease then only renews the lease.
        self._read_leased: dict[str, tuple[str, int]] = {}
        # base64 -> text of the keys (relative) and values the last read returned (see read)
        self._decoded: tuple[dict[str, str], dict[str, str]] = ({}, {})
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

    def _compare(self, key: bytes, version: str | None) -> dict[str, Any] | None:
        """The compare for `version` (None: create-only); None if the token is not ours."""
        if version is None:
            return _absent(key)
        try:
            return _mod_is(key, int(version))
        except ValueError:
            return None  # not a token this backend handed out: it cannot match

    def _put_plain(self, rel: str, value: str, deadline: float, lease: int = 0) -> None:
        req = _put(self._key(rel), value, lease)["request_put"]
        resp = self._call("/v3/kv/put", req, deadline)
        self._note_own(resp, True)

    def _delete_plain(self, rel: str, deadline: float) -> bool:
        resp = self._call("/v3/kv/deleterange", {"key": _b64(self._key(rel))}, deadline)
        deleted = _int(resp.get("deleted")) > 0
        self._note_own(resp, deleted)
        return deleted

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

    # -- the lease table -----------------------------------------------------------------------
    def _held(self, key: str) -> _Lease | None:
        with self._lock:
            return self._leases.get(key)

    def _hold(self, key: str, lease: _Lease) -> _Lease | None:
        """Record `lease` as the one `key` is on; the lease it replaces, if any."""
        with self._lock:
            old = self._leases.get(key)
            self._leases[key] = lease
            return old

    def _forget(self, key: str, lease: _Lease | None = None) -> _Lease | None:
        """Stop holding `key` (only if by `lease`, when given); the lease it was on."""
        with self._lock:
            held = self._leases.get(key)
            if held is None or (lease is not None and held != lease):
                return None
            del self._leases[key]
            return held

    def _unchanged_and_alive(self, key: str, value: str, ttl: float, deadline: float) -> bool:
        """A put with a ttl that would change nothing: the last read showed the key holding
        `value` on the lease we hold it by (of this ttl), nothing was written to it since, and a
        keepalive now confirms the lease lives, so the key is still there. Only the lease is
        renewed then: rewriting the same value would cost a raft write (an fsync) per member per
        loop for nothing (issue 16). Any write or delete of the key forgets what the read saw."""
        lease = self._held(key)
        with self._lock:
            seen = self._read_leased.get(key)
        if lease is None or lease.ttl != _lease_seconds(ttl) or seen != (value, lease.id):
            return False
        if self._keepalive(lease.id, deadline) > 0:
            return True
        self._stale(key)
        return False

    def _stale(self, key: str) -> None:
        with self._lock:
            self._read_leased.pop(key, None)

    # -- reading -------------------------------------------------------------------------------
    def read(self, timeout: float) -> dict[str, Entry]:
        deadline = time.monotonic() + timeout
        resp = self._call(
            "/v3/kv/range", {"key": _b64(self._base), "range_end": _b64(_range_end(self._base))}, deadline
        )
        revision = _int(resp.get("header", {}).get("revision"))
        with self._cond:
            self._seen_rev = max(self._seen_rev, revision)
            self._prune()
        base = self._base.decode()
        out: dict[str, Entry] = {}
        leased: dict[str, tuple[str, int]] = {}
        # Keys and values as base64: decoded once while they stay the same (an idle cluster's
        # every read, issue 16); the table holds only what the last read returned.
        seen_keys, seen_values = self._decoded
        keys: dict[str, str] = {}
        values: dict[str, str] = {}
        for kv in resp.get("kvs", []):
            k64, v64 = kv.get("key") or "", kv.get("value") or ""
            key = seen_keys.get(k64)
            if key is None:
                key = _unb64(k64).removeprefix(base)
            value = seen_values.get(v64)
            if value is None:
                value = _unb64(v64)
            keys[k64], values[v64] = key, value
            out[key] = Entry(value, str(_int(kv.get("mod_revision"))))
            if _int(kv.get("lease")):
                leased[key] = (value, _int(kv.get("lease")))
        self._decoded = (keys, values)
        with self._lock:
            self._read_leased = leased
        return out

    # -- writing -------------------------------------------------------------------------------
    def put(self, key: str, value: str, version: Version, timeout: float, ttl: float | None = None) -> bool:
        check_ttl_put(version, ttl)
        deadline = time.monotonic() + timeout
        if ttl is not None and self._unchanged_and_alive(key, value, ttl, deadline):
            return True
        self._stale(key)  # written below: the last read no longer says what the key holds
        if ttl is not None:
            self._put_leased(key, value, ttl, deadline)
            return True
        if version is ANY:
            self._put_plain(key, value, deadline)
            return True
        k = self._key(key)
        cmp = self._compare(k, version)
        if cmp is None:
            return False
        ok, _ = self._txn([cmp], [_put(k, value)], deadline)
        return ok

    def _put_leased(self, key: str, value: str, ttl: float, deadline: float) -> None:
        """Keepalive the key's lease (a fresh one if the ttl changed or it expired), then write."""
        seconds = _lease_seconds(ttl)
        lease = self._held(key)
        retired: _Lease | None = None
        if lease is not None and lease.ttl != seconds:
            retired, lease = lease, None
        if lease is not None and self._keepalive(lease.id, deadline) <= 0:
            lease = None
        for attempt in range(2):
            if lease is None:
                lease = _Lease(self._grant(seconds, deadline), seconds)
                self._hold(key, lease)
            try:
                self._put_plain(key, value, deadline, lease.id)
                break
            except EtcdRequestError as e:
                # The lease expired between keepalive and put: take a fresh one once.
                if e.code != _NOT_FOUND or attempt:
                    raise
                lease = None
        self._revoke_quietly(retired, deadline)

    def delete(self, key: str, version: str | AnyVersion, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        self._stale(key)
        if version is ANY:
            deleted = self._delete_plain(key, deadline)
        else:
            k = self._key(key)
            cmp = self._compare(k, version)
            deleted = cmp is not None and self._txn([cmp], [_delete(k)], deadline)[0]
        if deleted or version is ANY:
            self._revoke_quietly(self._forget(key), deadline)
        return deleted

    # -- leases --------------------------------------------------------------------------------
    def acquire(self, key: str, value: str, ttl: float, timeout: float, strict: bool = True) -> bool:
        """Create-only, on a new lease of `ttl` (etcd grants exactly that: `strict` holds)."""
        deadline = time.monotonic() + timeout
        k = self._key(key)
        seconds = _lease_seconds(ttl)
        lease = _Lease(self._grant(seconds, deadline), seconds)
        return self._txn_on_new_lease(key, lease, [_absent(k)], [_put(k, value, lease.id)], deadline)

    def _txn_on_new_lease(self, key: str, lease: _Lease, compare: list[dict[str, Any]],
                          ops: list[dict[str, Any]], deadline: float, keep_in_doubt: bool = True) -> bool:
        """Run a txn that puts `key` on `lease`, granted for it. Lost: the lease is revoked. Won:
        it becomes the key's lease and the one before is revoked. In doubt (`keep_in_doubt`):
        the write may have landed without us hearing, so the lease is kept and a renew can still
        confirm it (if it did not land, renewing fails its compare and says False)."""
        try:
            ok, _ = self._txn(compare, ops, deadline)
        except StoreUnavailable:
            if keep_in_doubt:
                self._hold(key, lease)
            raise
        if not ok:
            self._revoke_quietly(lease, deadline)
            return False
        old = self._hold(key, lease)
        if old is not None and old.id != lease.id:
            self._revoke_quietly(old, deadline)
        return True

    def renew(
        self, key: str, value: str, ttl: float, timeout: float, strict: bool = True, adopt: bool = False
    ) -> bool:
        """Keepalive the key's lease, then confirm the key is `value` on that lease.

        If `ttl` changed since acquisition, the key moves to a new lease of the new length in
        this call (a longer ttl on the old, shorter lease would break the runner's deadline).
        `adopt`: see `_adopt`."""
        deadline = time.monotonic() + timeout
        k = self._key(key)
        lease = self._held(key)
        seconds = _lease_seconds(ttl)
        if adopt:
            return self._adopt(key, value, lease, seconds, deadline)
        if lease is None:
            return False
        if lease.ttl != seconds:
            return self._move(key, value, lease, seconds, deadline)
        if self._keepalive(lease.id, deadline) <= 0:
            self._forget(key, lease)
            return False
        ok, _ = self._txn([_value_is(k, value), _lease_is(k, lease.id)], [], deadline)
        if not ok:
            # The key is gone or not on our lease: the lease protects nothing now.
            self._forget(key, lease)
            self._revoke_quietly(lease, deadline)
        return ok

    def _move(self, key: str, value: str, old: _Lease, seconds: int, deadline: float) -> bool:
        k = self._key(key)
        new = _Lease(self._grant(seconds, deadline), seconds)
        # Serialised with expiry in raft: if the compare sees the key on our lease, nobody else
        # can have taken it in between.
        ok, _ = self._txn([_value_is(k, value), _lease_is(k, old.id)], [_put(k, value, new.id)], deadline)
        if not ok:
            self._forget(key, old)
            self._revoke_quietly(new, deadline)
            self._revoke_quietly(old, deadline)
            return False
        self._hold(key, new)
        self._revoke_quietly(old, deadline)
        return True

    def _adopt(self, key: str, value: str, held: _Lease | None, seconds: int, deadline: float) -> bool:
        """Put the key, if it is `value` on whatever lease (a previous run's, or ours), onto a new
        lease of ours: one txn, so the key is never absent and a concurrent expiry followed by
        someone else's acquire makes the compare fail. The lease is granted during this call,
        so the key lasts at least until send time + ttl. The previous run's lease is left to run
        out: it holds nothing now (every leased key has a lease of its own)."""
        k = self._key(key)
        new = _Lease(self._grant(seconds, deadline), seconds)
        try:
            ok, _ = self._txn([_value_is(k, value)], [_put(k, value, new.id)], deadline)
        except StoreUnavailable:
            if held is None:
                self._hold(key, new)  # as in acquire: a renew can still confirm it if it landed
            raise
        if not ok:
            self._revoke_quietly(new, deadline)
            if held is not None:  # the key is gone or another's: our lease protects nothing
                self._revoke_quietly(self._forget(key, held), deadline)
            return False
        old = self._hold(key, new)
        if old is not None and old.id != new.id:
            self._revoke_quietly(old, deadline)
        return True

    def take_over(
        self, key: str, value: str, version: str, ttl: float, timeout: float,
        also: Mapping[str, tuple[str, Version]] | None = None,
    ) -> bool:
        """One txn: the key's and every also-key's mod_revision (absent: create_revision 0)
        compared, then the key put on a new lease of ours and the also-keys put (a put always
        bumps mod_revision, same value or not). The lease is granted during this call, before
        the txn, so the key lasts at least until send time + ttl. The previous holder's lease
        keeps running with nothing on it: its renew's compare on the key's lease fails."""
        others = check_also(key, also)
        deadline = time.monotonic() + timeout
        k = self._key(key)
        compare = [self._compare(k, version)]
        success = []
        for rel, (new_value, v) in others.items():
            compare.append(self._compare(self._key(rel), v))
            success.append(_put(self._key(rel), new_value))
        cmps = [c for c in compare if c is not None]
        if len(cmps) != len(compare):
            return False  # a token this backend never handed out cannot match
        seconds = _lease_seconds(ttl)
        held = self._held(key)
        new = _Lease(self._grant(seconds, deadline), seconds)
        for rel in (key, *others):
            self._stale(rel)
        # In doubt, as in acquire, unless a lease of ours already holds the key.
        return self._txn_on_new_lease(key, new, cmps, [_put(k, value, new.id), *success], deadline,
                                      keep_in_doubt=held is None)

    def release(self, key: str, value: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        k = self._key(key)
        ok, _ = self._txn([_value_is(k, value)], [_delete(k)], deadline)
        # Deleted, or not ours to delete: either way our lease for it protects nothing now.
        self._revoke_quietly(self._forget(key), deadline)
        return ok

    # -- shutting down -------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the watch and drop connections. Leases are left to run out (see the class doc)."""
        self._stop_watch()
        self._gw.close()
