"""The etcd v3 JSON gateway client (`_Gateway`: one deadline per call across several hosts), its
request errors, the base64 and key-range helpers, and the transaction compare/op builders."""

from __future__ import annotations

import base64
import json
import ssl
import threading
import time
from collections.abc import Mapping
from typing import Any

import urllib3
from urllib3.exceptions import HTTPError

from pgwarden.store.base import StoreError, StoreUnavailable

# gRPC status codes meaning "this request is wrong" (another host would say the same), as opposed
# to "this server cannot answer now" (try the next host, then report the store unavailable).
_REQUEST_ERRORS = frozenset({3, 5, 6, 7, 9, 11, 16})
_NOT_FOUND = 5


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


def _url(host: str, https: bool = False) -> str:
    return host.rstrip("/") if "://" in host else f"{'https' if https else 'http'}://{host}"


def _int(value: Any) -> int:
    # The gateway encodes int64 as strings and omits zero values.
    return int(value or 0)


class _Gateway:
    """POSTs JSON to one of several etcd hosts, all within one deadline per call."""

    def __init__(self, hosts: list[str], ssl_context: ssl.SSLContext | None = None) -> None:
        """`ssl_context`: https to hosts given without a scheme, verified with this context."""
        if not hosts:
            raise ValueError("etcd: at least one host is needed")
        self.urls = [_url(h, ssl_context is not None) for h in hosts]
        self._preferred = 0
        self._lock = threading.Lock()
        self.ssl_context = ssl_context
        self._pool = urllib3.PoolManager(num_pools=max(4, len(hosts)), maxsize=4, retries=False,
                                         ssl_context=ssl_context)

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
