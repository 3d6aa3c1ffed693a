"""A started HTTPS ApiServer on loopback for tests (node1, the primary, over a seeded in-memory
store), its certificate followed by a ContextSource."""

from __future__ import annotations

import urllib3

from pgwarden.api.server import ApiServer
from pgwarden.api.state import StateHolder
from pgwarden.tls.contexts import ContextSource, TlsPaths, server_context
from tests.support.ports import free_port

from .env import Env, FakeCommands, seeded_store
from .factory import PRIMARY


def start_https(paths: TlsPaths, interval: float = 1.0, max_connections: int = 64) -> ApiServer:
    holder, store, commands = StateHolder(), seeded_store(), FakeCommands()
    server = ApiServer("127.0.0.1", free_port(), holder, store, commands, "node1",
                       store_timeout=2.0, tls=ContextSource(paths, server_context, interval),
                       max_connections=max_connections)
    server.start()
    Env(server, holder, store, commands, urllib3.PoolManager()).publish(PRIMARY)
    return server
