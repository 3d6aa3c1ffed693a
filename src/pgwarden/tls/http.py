"""urllib3 pools for calling a REST API over https with our CA and client certificate."""

from __future__ import annotations

import ssl
from typing import Any

import urllib3

from pgwarden.tls.contexts import ContextSource, TlsPaths, client_context


def api_pool(paths: TlsPaths | None, **kwargs: Any) -> urllib3.PoolManager:
    """A PoolManager (kwargs as urllib3's) that verifies https servers against `paths.cafile`,
    host names included; None: the system's CAs and no client certificate."""
    if paths is not None:
        kwargs["ssl_context"] = client_context(paths)
    return urllib3.PoolManager(**kwargs)


class FollowingPool:
    """A PoolManager for the agent's calls to other members' APIs (peers, failsafe, other sites)
    with the client context of `tls` (our CA and certificate, restapi.tls), rebuilt when the files
    rotate; None: plain http, or https against the system's CAs."""

    def __init__(self, tls: ContextSource | None, **kwargs: Any) -> None:
        self._tls = tls
        self._kwargs = kwargs
        self._ctx: ssl.SSLContext | None = None if tls is None else tls.get()
        self._http = self._new()

    def _new(self) -> urllib3.PoolManager:
        return urllib3.PoolManager(ssl_context=self._ctx, **self._kwargs)

    def get(self) -> urllib3.PoolManager:
        if self._tls is not None and (ctx := self._tls.get()) is not self._ctx:
            self._ctx = ctx  # rotated certificates: new connections with the new context
            old, self._http = self._http, self._new()
            old.clear()
        return self._http

    def clear(self) -> None:
        self._http.clear()
