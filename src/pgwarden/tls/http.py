"""urllib3 pools for calling a REST API over https with our CA and client certificate."""

from __future__ import annotations

from typing import Any

import urllib3

from pgwarden.tls.contexts import TlsPaths, client_context


def api_pool(paths: TlsPaths | None, **kwargs: Any) -> urllib3.PoolManager:
    """A PoolManager (kwargs as urllib3's) that verifies https servers against `paths.cafile`,
    host names included; None: the system's CAs and no client certificate."""
    if paths is not None:
        kwargs["ssl_context"] = client_context(paths)
    return urllib3.PoolManager(**kwargs)
