"""Who may reach a node's REST API, checked before an agent starts: its credentials (read once,
from `restapi.authentication`) and the refusal to listen beyond loopback without them.

Without credentials anyone who reaches the port can switch over, restart or wipe a member, so an
agent whose `restapi.listen_address` is not loopback refuses to start unless it has
`restapi.authentication` or the explicit opt-out `restapi.insecure: true`.
"""

from __future__ import annotations

import ipaddress
import socket

from pgwarden.config.errors import ConfigError
from pgwarden.config.schema import NodeConfig


def _literal_loopback(host: str) -> bool | None:
    """Whether an address literal is loopback; None when `host` is not a literal."""
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0]).is_loopback
    except ValueError:
        return None


def is_loopback(host: str) -> bool:
    """Whether every address the API would listen on for `host` is loopback. An empty host (all
    addresses) is not; a name counts only if everything it resolves to is loopback."""
    if not host:
        return False
    literal = _literal_loopback(host)
    if literal is not None:
        return literal
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return False
    addrs = {str(info[4][0]) for info in infos}
    return bool(addrs) and all(_literal_loopback(a) for a in addrs)


def api_credentials(cfg: NodeConfig, source: str) -> tuple[str, str] | None:
    """The (username, password) the agent's REST API requires, None when it requires none. A
    ConfigError (one line, naming `source`) when the password cannot be read or is empty, or when
    the API would listen beyond loopback unprotected without the opt-out."""
    api = cfg.restapi
    if api.authentication is not None:
        try:
            password = api.authentication.secret()
        except ValueError as e:
            raise ConfigError(f"{source}: restapi.authentication: {e}") from None
        if not password:
            raise ConfigError(f"{source}: restapi.authentication: the password is empty")
        return api.authentication.username, password
    if not api.insecure and not is_loopback(api.listen_address):
        where = api.listen_address or "every address"
        raise ConfigError(
            f"{source}: the REST API would listen on {where} (not loopback) without authentication, "
            f"so anyone reaching port {api.port} could switch over, restart or wipe members; set "
            f"restapi.authentication (username and password or password_file), or restapi.insecure: "
            f"true to accept that")
    return None
