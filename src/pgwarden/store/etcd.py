"""The etcd v3 backend of the store port, spoken as JSON over etcd's gRPC gateway with urllib3.

Why not a client library: every call must end within its own deadline (SAFETY rule 15: the runner
clips each call's timeout to the lease it has left), which urllib3 gives us directly with
`Timeout(total=...)` and retries off; the gateway needs no grpc/protobuf dependency; and the
`etcd3` PyPI client is unmaintained since 2020 and pins an old protobuf.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import urllib3
from urllib3.exceptions import HTTPError, ReadTimeoutError

from pgwarden.config.errors import ConfigError
from pgwarden.config.load import parse_settings
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

log = logging.getLogger(__name__)

# gRPC status codes meaning "this request is wrong" (another host would say the same), as opposed
# to "this server cannot answer now" (try the next host, then report the store unavailable).
_REQUEST_ERRORS = frozenset({3, 5, 6, 7, 9, 11, 16})
_NOT_FOUND = 5

# A watch stream that stays silent this long is reopened (from the next revision, so nothing is
# lost): a stream to a frozen or partitioned server would otherwise hang forever unnoticed.
_WATCH_IDLE = 10.0
_WATCH_CONNECT = 2.0
_WATCH_BACKOFF_MAX = 2.0


class _WatchReset(Exception):
    """The watch must start over from the current revision (its resume point was compacted)."""


class EtcdRequestError(StoreError):
    """etcd answered with an error that retrying on another host would not fix."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"etcd error {code}: {message}")
        self.code = code


def _b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode("ascii")


def _unb64(text: str | None) -> str:
    return base64.b64decode(text or "").decode("utf-8", errors="replace")


def _range_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key starting with `prefix` (etcd's prefix range)."""
    b = bytearray(prefix)
    while b:
        if b[-1] < 0xFF:
            b[-1] += 1
            return bytes(b)
        b.pop()
    return b"\0"  # every key


def _lease_seconds(ttl: float) -> int:
    # etcd TTLs are whole seconds; rounding up keeps the key at least as long as asked.
    return max(1, math.ceil(ttl))


def _url(host: str) -> str:
    return host.rstrip("/") if "://" in host else f"http://{host}"


def _int(value: Any) -> int:
    # The gateway encodes int64 as strings and omits zero values.
    return int(value or 0)


class _Gateway:
    """POSTs JSON to one of several etcd hosts, all within one deadline per call."""

    def __init__(self, hosts: list[str]) -> None:
        if not hosts:
            raise ValueError("etcd: at least one host is needed")
        self.urls = [_url(h) for h in hosts]
        self._preferred = 0
        self._lock = threading.Lock()
        self._pool = urllib3.PoolManager(num_pools=max(4, len(hosts)), maxsize=4, retries=False)

    def current(self) -> tuple[int, str]:
        with self._lock:
            return self._preferred, self.urls[self._preferred]

    def failed(self, index: int) -> None:
        """Move on from a host that did not answer, so the next call starts elsewhere."""
        with self._lock:
            if self._preferred == index:
                self._preferred = (index + 1) % len(self.urls)

    def call(self, path: str, body: Mapping[str, Any], deadline: float) -> dict[str, Any]:
        payload = json.dumps(body).encode()
        start, _ = self.current()
        n = len(self.urls)
        # Two passes: a pooled keep-alive connection the server has dropped fails once without
        # the request having been processed; the second pass reconnects.
        order = [(start + i) % n for i in range(n)] * 2
        last = "no time left to ask"
        for index in order:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            url = self.urls[index] + path
            try:
                resp = self._pool.request(
                    "POST",
                    url,
                    body=payload,
                    headers={"Content-Type": "application/json"},
                    timeout=urllib3.Timeout(total=remaining),
                    retries=False,
                    redirect=False,
                )
            except (HTTPError, OSError) as e:
                last = f"{url}: {e}"
                self.failed(index)
                continue
            try:
                data = json.loads(resp.data.decode() or "{}")
            except ValueError:
                data = None
            if not isinstance(data, dict):
                last = f"{url}: HTTP {resp.status} with a body that is not a JSON object"
                self.failed(index)
                continue
            err = data.get("error")
            if resp.status == 200 and not err:
                with self._lock:
                    self._preferred = index
                return data
            # Unary errors come as {"error": msg, "code": n}; errors inside a stream (keepalive)
            # as {"error": {"grpc_code": n, "message": msg}}.
            if isinstance(err, dict):
                code, message = _int(err.get("grpc_code")), str(err.get("message", ""))
            else:
                code, message = _int(data.get("code")), str(data.get("message") or err or "")
            if code in _REQUEST_ERRORS:
                raise EtcdRequestError(code, message)
            last = f"{url}: HTTP {resp.status}: {message or 'error'}"
            self.failed(index)
        raise StoreUnavailable(f"etcd did not answer in time ({last})")

    def close(self) -> None:
        self._pool.clear()


@dataclass(frozen=True)
class _Lease:
    id: int
    ttl: int  # seconds asked for (to notice a changed ttl)


def _put(key: bytes, value: str, lease: int = 0) -> dict[str, Any]:
    req: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
    if lease:
        req["lease"] = str(lease)
    return {"request_put": req}


def _delete(key: bytes) -> dict[str, Any]:
    return {"request_delete_range": {"key": _b64(key), "prev_kv": True}}


def _absent(key: bytes) -> dict[str, Any]:
    return {"key": _b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}


def _mod_is(key: bytes, revision: int) -> dict[str, Any]:
    return {"key": _b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(revision)}


def _value_is(key: bytes, value: str) -> dict[str, Any]:
    return {"key": _b64(key), "target": "VALUE", "result": "EQUAL", "value": _b64(value)}


def _lease_is(key: bytes, lease: int) -> dict[str, Any]:
    return {"key": _b64(key), "target": "LEASE", "result": "EQUAL", "lease": str(lease)}


class EtcdStore(Store):
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
        self._lock = threading.Lock()  # guards the lease fields
        self._leader_lease: _Lease | None = None
        self._member_lease: _Lease | None = None
        self._member_name: str | None = None
        self._init_lease: _Lease | None = None
        # Change tracking shared with the watch thread (all under _cond).
        self._cond = threading.Condition()
        self._seen_rev = 0  # changes up to here are known to the caller
        self._changes: list[int] = []  # revisions of relevant events seen by the watch
        self._own: set[int] = set()  # revisions of writes this instance made
        self._lost = False  # the watch may have missed events
        self._stop = threading.Event()
        self._watch: threading.Thread | None = None
        self._watch_resp: urllib3.BaseHTTPResponse | None = None
        self._watch_next: int | None = None  # revision the watch resumes from

    # -- keys and small helpers ----------------------------------------------------------------
    def _key(self, rel: str) -> bytes:
        return self._base + rel.encode()

    def _call(self, path: str, body: Mapping[str, Any], deadline: float) -> dict[str, Any]:
        return self._gw.call(path, body, deadline)

    def _note_own(self, resp: Mapping[str, Any], changed: bool) -> None:
        if not changed:
            return
        rev = _int(resp.get("header", {}).get("revision"))
        with self._cond:
            self._own.add(rev)
            if len(self._own) > 4096:  # nobody waits for changes; don't grow without bound
                self._own = set(sorted(self._own)[-1024:])

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
                        settings = parse_settings(json.loads(raw), f"etcd key {base}config")
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

    # -- waiting for changes -------------------------------------------------------------------
    def _pending(self) -> bool:
        return self._lost or any(r > self._seen_rev and r not in self._own for r in self._changes)

    def _prune(self) -> None:
        self._changes = [r for r in self._changes if r > self._seen_rev]
        self._own = {r for r in self._own if r > self._seen_rev}

    def wait_for_change(self, timeout: float) -> bool:
        self._ensure_watch()
        with self._cond:
            if not self._cond.wait_for(self._pending, timeout=max(0.0, timeout)):
                return False
            self._seen_rev = max([self._seen_rev, *self._changes])
            self._lost = False
            self._prune()
            return True

    def _ensure_watch(self) -> None:
        with self._lock:
            if self._watch is not None or self._stop.is_set():
                return
            with self._cond:
                self._watch_next = self._seen_rev + 1 if self._seen_rev else None
            self._watch = threading.Thread(
                target=self._watch_loop, name=f"etcd-watch-{self.cluster}", daemon=True
            )
            self._watch.start()

    def _watch_loop(self) -> None:
        pool = urllib3.PoolManager(num_pools=max(4, len(self.hosts)), maxsize=1, retries=False)
        backoff = 0.1
        first = True
        try:
            while not self._stop.is_set():
                index, url = self._gw.current()
                try:
                    self._watch_once(pool, url, mark_lost=not first)
                    backoff = 0.1
                except Exception as e:  # any failure: reconnect, maybe elsewhere
                    if self._stop.is_set():
                        break
                    log.debug("etcd: watch on %s ended: %s", url, e)
                    if not isinstance(e, ReadTimeoutError | _WatchReset):  # not the host's fault
                        self._gw.failed(index)
                    if self._stop.wait(backoff):
                        break
                    backoff = min(backoff * 2, _WATCH_BACKOFF_MAX)
                first = False
        finally:
            pool.clear()

    def _watch_once(self, pool: urllib3.PoolManager, url: str, mark_lost: bool) -> None:
        create: dict[str, Any] = {"key": _b64(self._base), "range_end": _b64(_range_end(self._base))}
        if self._watch_next is not None:
            create["start_revision"] = str(self._watch_next)
        resp = pool.request(
            "POST",
            url + "/v3/watch",
            body=json.dumps({"create_request": create}).encode(),
            headers={"Content-Type": "application/json"},
            timeout=urllib3.Timeout(connect=_WATCH_CONNECT, read=_WATCH_IDLE),
            retries=False,
            redirect=False,
            preload_content=False,
        )
        self._watch_resp = resp
        try:
            if self._stop.is_set():
                return
            if resp.status != 200:
                raise StoreUnavailable(f"watch: HTTP {resp.status}")
            buf = b""
            for chunk in resp.stream(65536):
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        self._on_watch_message(json.loads(line), mark_lost)
            raise StoreUnavailable("watch stream closed by the server")
        finally:
            self._watch_resp = None
            resp.release_conn()

    def _on_watch_message(self, msg: Mapping[str, Any], mark_lost: bool) -> None:
        if "error" in msg:
            raise StoreUnavailable(f"watch: {msg['error']}")
        res = msg.get("result", {})
        if res.get("compact_revision") or res.get("canceled"):
            # Our resume point was compacted away: start afresh and assume we missed something.
            self._watch_next = None
            with self._cond:
                self._lost = True
                self._cond.notify_all()
            raise _WatchReset(f"watch canceled: {res.get('cancel_reason') or 'compacted'}")
        if res.get("created"):
            if self._watch_next is None:
                self._watch_next = _int(res.get("header", {}).get("revision")) + 1
                if mark_lost:  # a reconnect from "now": whatever happened meanwhile is unknown
                    with self._cond:
                        self._lost = True
                        self._cond.notify_all()
            return
        events = res.get("events") or []
        if not events:
            return
        relevant: list[int] = []
        last = 0
        base = self._base.decode()
        for ev in events:
            kv = ev.get("kv", {})
            rev = _int(kv.get("mod_revision"))
            last = max(last, rev)
            rel = _unb64(kv.get("key")).removeprefix(base)
            refresh = ev.get("type", "PUT") == "PUT" and _int(kv.get("version")) > 1
            if rel.startswith("members/") and refresh:
                continue
            relevant.append(rev)
        self._watch_next = last + 1
        if relevant:
            with self._cond:
                self._changes.extend(relevant)
                self._cond.notify_all()

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
        self._stop.set()
        resp = self._watch_resp
        if resp is not None:
            try:
                resp.shutdown()  # unblocks the watch thread's read
            except Exception:  # already closed is fine
                pass
        thread = self._watch
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=1.0)
        with self._cond:
            self._cond.notify_all()
        self._gw.close()
