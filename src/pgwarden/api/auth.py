"""Who may do what on the REST API: HTTP Basic authentication (`restapi.authentication`, Patroni's
names) for everything except what load balancers and peers need anonymously.

Open, whatever the configuration: GET, HEAD and OPTIONS on the health paths, /status (/patroni),
/position (peers read it before a promotion decision), /history (timeline switches: nothing a
member's /status does not show), /metrics (what /status shows, as numbers, for Prometheus, as
Patroni's is) and /dashboard (the page only: the data it polls needs the credentials).
Everything else needs the credentials: every POST, PUT, PATCH and DELETE, GET /decisions (what
the agent saw and did), GET /config (the cluster settings) and GET /cluster (which embeds the same
settings and the pending switchover), and GET /leader-check (each call makes this node connect to
the leader's ports and open a PostgreSQL session: peers send the credentials, as for the failsafe's
requests). A route not listed as open is protected, so a new one is
safe by default.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging

from pgwarden.api.health import HEALTH_PATHS
from pgwarden.api.messages import Request, Response, json_response

log = logging.getLogger("pgwarden.api.server")

REALM = "pgwarden"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
OPEN_PATHS = frozenset({
    *HEALTH_PATHS, *(p + "/" for p in HEALTH_PATHS if p != "/"),
    "/status", "/patroni", "/position", "/history", "/site",
    "/metrics", "/dashboard",  # metrics, as Patroni's; the page itself holds no state (its data is not open)
})


def is_open(method: str, path: str) -> bool:
    """Whether anyone may make this request (see the module's docstring)."""
    return method in SAFE_METHODS and path in OPEN_PATHS


def _parse_basic(header: str | None) -> tuple[bytes, bytes] | None:
    """(user, password) from an `Authorization: Basic ...` value; None when absent or malformed."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(b":")
    return (user, password) if sep else None


def basic_header(username: str, password: str) -> str:
    """The Authorization value a client sends: UTF-8, as the server compares (RFC 7617 leaves the
    charset open; urllib3's own helper would use Latin-1)."""
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


class BasicAuth:
    """The credentials the API requires; `check` compares in constant time."""

    def __init__(self, username: str, password: str) -> None:
        self._user = _digest(username.encode("utf-8"))
        self._password = _digest(password.encode("utf-8"))

    def check(self, header: str | None) -> bool:
        given = _parse_basic(header)
        user, password = given if given is not None else (b"", b"")
        # Digests of equal length, so not even the lengths leak; both comparisons always run, so
        # the time taken says nothing about which part was wrong.
        user_ok = hmac.compare_digest(_digest(user), self._user)
        password_ok = hmac.compare_digest(_digest(password), self._password)
        return given is not None and user_ok and password_ok

    def refusal(self, request: Request) -> Response | None:
        """None when `request` may proceed, else the 401 to answer."""
        if is_open(request.method, request.path):
            return None
        header = request.headers.get("authorization")
        if self.check(header):
            return None
        if header:
            log.warning("REST API: refused %s %s: wrong credentials", request.method, request.path)
            error = "wrong credentials (HTTP Basic, restapi.authentication)"
        else:
            error = f"{request.method} {request.path} needs credentials (HTTP Basic, restapi.authentication)"
        if request.headers.get("x-requested-with"):
            # A script asking (the dashboard): no challenge, or the browser would open its own
            # login dialog over the page, which asks for the credentials itself.
            return json_response(401, {"error": error})
        return json_response(401, {"error": error}, {"WWW-Authenticate": f'Basic realm="{REALM}"'})
