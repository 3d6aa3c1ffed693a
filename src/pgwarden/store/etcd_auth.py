"""Turning on etcd's authentication for pgwarden (what `etcdctl user add root; etcdctl auth
enable` and a prefix-scoped role do), over the same JSON gateway the backend speaks.

`enable_auth` creates the `root` user etcd insists on before auth can be enabled, a role allowed
to read and write only under pgwarden's prefix, a user holding that role (the one agents log in
as), and then enables auth. It is idempotent: on an etcd whose auth is already on it checks that
the root password still logs in and changes nothing."""

from __future__ import annotations

import ssl
import time

from pgwarden.store.base import StoreError
from pgwarden.store.etcd_gateway import EtcdRequestError, _b64, _Gateway, _range_end
from pgwarden.tls.contexts import TlsPaths, client_context

ROOT = "root"
ROLE = "pgwarden"


def _context(tls: TlsPaths | None) -> ssl.SSLContext | None:
    return None if tls is None else client_context(tls)


def auth_enabled(hosts: list[str], root_password: str, timeout: float, tls: TlsPaths | None = None) -> bool:
    """True if etcd accepts `root` with this password (auth on); False if auth is off."""
    gw = _Gateway(hosts, (ROOT, root_password), _context(tls))
    try:
        gw.call("/v3/auth/status", {}, time.monotonic() + timeout)
        return True
    except EtcdRequestError as e:
        if "authentication is not enabled" in e.message:
            return False
        raise
    finally:
        gw.close()


def enable_auth(hosts: list[str], root_password: str, user: str, password: str, prefix: str,
                timeout: float, tls: TlsPaths | None = None) -> None:
    if auth_enabled(hosts, root_password, timeout, tls):
        return
    deadline = time.monotonic() + timeout
    gw = _Gateway(hosts, None, _context(tls))
    key = prefix.rstrip("/").encode() + b"/"
    steps: list[tuple[str, dict[str, object]]] = [
        ("/v3/auth/user/add", {"name": ROOT, "password": root_password}),
        ("/v3/auth/role/add", {"name": ROOT}),
        ("/v3/auth/user/grant", {"user": ROOT, "role": ROOT}),
        ("/v3/auth/role/add", {"name": ROLE}),
        ("/v3/auth/role/grant", {"name": ROLE, "perm": {"permType": "READWRITE", "key": _b64(key),
                                                        "range_end": _b64(_range_end(key))}}),
        ("/v3/auth/user/add", {"name": user, "password": password}),
        ("/v3/auth/user/grant", {"user": user, "role": ROLE}),
        ("/v3/auth/enable", {}),
    ]
    try:
        for path, body in steps:
            try:
                gw.call(path, body, deadline)
            except EtcdRequestError as e:
                # A half-finished earlier attempt: what exists already is what we wanted.
                if "already exists" not in e.message and "already granted" not in e.message:
                    raise StoreError(f"etcd: could not enable authentication ({path}: {e.message})") from None
    finally:
        gw.close()
