"""The logical gate's listener: a port in front of the node's PostgreSQL that subscribers connect
to instead of PostgreSQL's own, on an event loop thread of the agent.

Everything a client sends goes to the server unchanged, so authentication is PostgreSQL's: the
gate connects over TCP to the server's listen address, where pg_hba.conf asks for a scram password
(and with TLS, hostssl), never over the local socket where the agent's OS user may log in as the
superuser by peer authentication. With TLS the gate presents the server's own certificate, so
verify-full and SCRAM channel binding (tls-server-end-point) see what they would see directly.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

import psycopg

from pgwarden.gate.clock import ConfirmedClock
from pgwarden.gate.relay import Relay, Upstream

log = logging.getLogger("pgwarden.gate")

MAX_CONNECTIONS = 64  # subscriptions' apply and table-copy workers; more are refused


class GateServer:
    def __init__(self, listen: tuple[str, int], upstream: Upstream,
                 connect: Callable[[], psycopg.Connection[Any]]) -> None:
        self.listen = listen
        self._upstream = upstream
        self.clock = ConfirmedClock(connect)
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._relays: set[Relay] = set()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="pgwarden-gate", daemon=True)

    def start(self, timeout: float = 10.0) -> None:
        """Listening when this returns; OSError (a port in use) raised here."""
        self._thread.start()
        if not self._ready.wait(timeout):
            raise OSError(f"the logical gate did not start listening on {self.listen[0]}:{self.listen[1]}")
        if self._error is not None:
            raise self._error
        log.info("logical gate listening on %s:%d for PostgreSQL at %s:%d",
                 *self.listen, self._upstream.host, self._upstream.port)

    def stop(self) -> None:
        self.clock.stop()
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._serve, *self.listen, limit=1 << 16))
        except OSError as e:
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            self._server.close()
            for task in asyncio.all_tasks(self._loop):
                task.cancel()
            self._loop.run_until_complete(asyncio.sleep(0))
            self._loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._relays) >= MAX_CONNECTIONS:
            log.warning("logical gate: %d connections open; refusing one more", len(self._relays))
            writer.close()
            return
        relay = Relay((reader, writer), self._upstream, self.clock)
        self._relays.add(relay)
        try:
            await relay.run()
        finally:
            self._relays.discard(relay)

    def holding(self) -> list[int]:
        """The positions connections are held at now (status and tests)."""
        return sorted(h for r in list(self._relays) if (h := r.holding) is not None)
