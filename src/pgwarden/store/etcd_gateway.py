"""The etcd v3 JSON gateway client (`_Gateway`: one deadline per call across several hosts), its
request errors, the base64 and key-range helpers, and the transaction compare/op builders."""

from __future__ import annotations

import base64
import http.client
import ssl
import threading
import time
from collections.abc import Mapping
from typing import Any

import msgspec

from pgwarden.store.base import StoreError, StoreUnavailable
from pgwarden.store.http_conns import HostConnections, Stream

# gRPC status codes meaning "this request is wrong" (another host would say the same), as opposed
# to "this server cannot answer now" (try the next host, then report the store unavailable).
_REQUEST_ERRORS = frozenset({3, 5, 6, 7, 9, 11, 16})
_NOT_FOUND = 5

# msgspec's JSON codec: the same documents as the json module, at about a third of its CPU per
# call (every loop's calls, issue 16).
_ENCODE = msgspec.json.Encoder().encode
_DECODE = msgspec.json.Decoder().decode


class EtcdRequestError(StoreError):
    """etcd answered with an error that retrying on another host would not fix."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"etcd error {code}: {message}")
        self.code = code
        self.message = message


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


_UNAUTHENTICATED = 16
_INVALID_ARGUMENT = 3


class _Gateway:
    """POSTs JSON to one of several etcd hosts, all within one deadline per call.

    With `credentials` (user, password) it authenticates first and sends the token etcd gives
    back in the `Authorization` header (the gateway's name for gRPC's `token` metadata); an
    expired or revoked token is replaced once per call. The password stays in this object.

    `ssl_context`: https to hosts given without a scheme, verified with this context."""

    def __init__(self, hosts: list[str], credentials: tuple[str, str] | None = None,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        if not hosts:
            raise ValueError("etcd: at least one host is needed")
        self.urls = [_url(h, ssl_context is not None) for h in hosts]
        self._preferred = 0
        self._lock = threading.Lock()
        self.ssl_context = ssl_context
        self._conns = [HostConnections(url, ssl_context) for url in self.urls]
        self._credentials = credentials
        self._token: str | None = None

    def headers(self, deadline: float) -> dict[str, str]:
        """Request headers, authenticating first if this gateway has credentials and no token."""
        headers = {"Content-Type": "application/json"}
        if self._credentials is None:
            return headers
        token = self._token
        if token is None:
            user, password = self._credentials
            try:
                answer = self._post("/v3/auth/authenticate", {"name": user, "password": password},
                                    deadline, headers)
            except EtcdRequestError as e:
                raise EtcdRequestError(e.code, f"etcd refused the credentials of user {user!r} "
                                       f"({e.message}); check store.etcd.authentication") from None
            token = str(answer.get("token") or "")
            if not token:
                raise StoreError("etcd answered the authentication without a token: is auth enabled?")
            self._token = token
        return {**headers, "Authorization": token}

    def current(self) -> tuple[int, str]:
        with self._lock:
            return self._preferred, self.urls[self._preferred]

    def failed(self, index: int) -> None:
        """Move on from a host that did not answer, so the next call starts elsewhere."""
        with self._lock:
            if self._preferred == index:
                self._preferred = (index + 1) % len(self.urls)

    def forget_token(self) -> None:
        self._token = None

    def call(self, path: str, body: Mapping[str, Any], deadline: float) -> dict[str, Any]:
        try:
            return self._post(path, body, deadline, self.headers(deadline))
        except EtcdRequestError as e:
            if e.code == _UNAUTHENTICATED and self._credentials is not None:
                self._token = None  # expired (etcd's simple tokens time out) or revoked: once more
                return self._post(path, body, deadline, self.headers(deadline))
            if e.code == _INVALID_ARGUMENT and "user name is empty" in e.message:
                raise EtcdRequestError(e.code, "etcd has authentication enabled: give a user and "
                                       "password in store.etcd.authentication") from None
            raise

    def _post(self, path: str, body: Mapping[str, Any], deadline: float,
              headers: Mapping[str, str]) -> dict[str, Any]:
        payload = _ENCODE(body)
        start, _ = self.current()
        n = len(self.urls)
        # Two passes: a pooled keep-alive connection the server has dropped fails once without
        # the request having been processed; the second pass reconnects.
        order = [(start + i) % n for i in range(n)] * 2
        last = "no time left to ask"
        refused: set[str] = set()
        attempted: set[str] = set()
        for index in order:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            url = self.urls[index] + path
            attempted.add(self.urls[index])
            try:
                status, raw = self._conns[index].post(path, payload, headers, deadline)
            except (http.client.HTTPException, OSError) as e:
                last = f"{url}: {e!r}" if not str(e) else f"{url}: {e}"
                if isinstance(e, ConnectionRefusedError):
                    refused.add(self.urls[index])
                self.failed(index)
                continue
            try:
                data = _DECODE(raw or b"{}")
            except ValueError:  # msgspec.DecodeError is one
                data = None
            if not isinstance(data, dict):
                last = f"{url}: HTTP {status} with a body that is not a JSON object"
                self.failed(index)
                continue
            err = data.get("error")
            if status == 200 and not err:
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
            last = f"{url}: HTTP {status}: {message or 'error'}"
            self.failed(index)
        if refused and refused == attempted:
            raise StoreUnavailable(f"etcd refused the connection at {', '.join(sorted(refused))}")
        raise StoreUnavailable(f"etcd did not answer in time ({last})")

    def open_stream(self, index: int, path: str, body: Mapping[str, Any], connect_timeout: float,
                    idle: float) -> Stream:
        """A streaming call (the watch) to host `index`, on a connection of its own
        (`HostConnections.open_stream`), authenticated as every call is."""
        headers = self.headers(time.monotonic() + connect_timeout)
        return self._conns[index].open_stream(path, _ENCODE(body), headers, connect_timeout, idle)

    def close(self) -> None:
        for conns in self._conns:
            conns.close()


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
