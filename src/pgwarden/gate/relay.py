"""One client's connection through the logical gate: the startup handshake (TLS on both sides when
the server uses it), then the two directions, as tasks on the gate's event loop.

Client to server is a byte pump. Server to client goes through a queue of segments (framer.py:
runs of whole messages, each waiting for the highest position one of its messages waits for);
the writer sends the queue in order, each held segment holding everything behind it.
Keepalives skip a held queue so a long hold does not trip wal_sender_timeout, with their walEnd
lowered to the last position delivered (see `wire.clamp_keepalive`).

asyncio rather than a thread per direction: the server side may be TLS, and one SSL object must
not be read and written from two threads at once; asyncio's TLS runs both directions on one.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections import deque
from dataclasses import dataclass

from pgwarden.core.gate import GATE_PARAMETER
from pgwarden.core.model import int_to_lsn
from pgwarden.gate import wire
from pgwarden.gate.clock import ConfirmedClock
from pgwarden.gate.framer import Framer, Segment

log = logging.getLogger("pgwarden.gate")

QUEUE_LIMIT = 64 << 20  # bytes held per connection before the reader stops reading the server
HOLD_CHECK = 0.5  # seconds between keepalive checks while the head of the queue is held
HOLD_WARN = 10.0  # a hold this long is logged
CHUNK = 1 << 18


@dataclass(frozen=True)
class Upstream:
    """How the gate reaches its own PostgreSQL server."""

    host: str
    port: int
    client_tls: ssl.SSLContext | None  # the server's ssl = on: the gate connects with TLS too
    server_tls: ssl.SSLContext | None  # offered to the gate's clients (the server's certificate)
    connect_timeout: float = 5.0


IN_RECOVERY = ("the logical gate releases changes only on a primary, and this server is in recovery "
               "(a standby); subscribe through `pgwarden ctl dsn --logical`, which reaches the primary")

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class Relay:
    def __init__(self, client: Stream, upstream: Upstream, clock: ConfirmedClock) -> None:
        self._client_r, self._client_w = client
        self._up = upstream
        self._clock = clock
        self._queue: deque[Segment] = deque()
        self._queued_bytes = 0
        self._changed = asyncio.Event()  # the queue grew or shrank, or the server side ended
        self._ended = False
        self._delivered = 0  # the highest XLogData start sent to the client
        self.holding: int | None = None  # the position the head of the queue waits for (status)
        self._held_since = 0.0  # loop time the head began to wait (0: not holding)
        self._warned_at = 0.0

    async def run(self) -> None:
        server: Stream | None = None
        try:
            server = await self._handshake()
            if server is not None:
                await self._relay(*server)
        except (OSError, EOFError, asyncio.IncompleteReadError, wire.ProtocolError) as e:
            log.debug("gate connection: %s", e)
        finally:
            for w in (self._client_w, server[1] if server else None):
                if w is not None:
                    w.close()

    # -- startup ------------------------------------------------------------------------------

    async def _handshake(self) -> Stream | None:
        packet = await wire.read_startup(self._client_r)
        encrypted = False
        for _ in range(2):  # SSLRequest and GSSENCRequest, each at most once
            code = wire.startup_code(packet)
            if code == wire.SSL_REQUEST and self._up.server_tls is not None and not encrypted:
                self._client_w.write(b"S")
                await self._client_w.drain()
                await self._client_w.start_tls(self._up.server_tls)
                encrypted = True
            elif code in (wire.SSL_REQUEST, wire.GSSENC_REQUEST):
                self._client_w.write(b"N")
                await self._client_w.drain()
            else:
                break
            packet = await wire.read_startup(self._client_r)
        if self._up.server_tls is not None and not encrypted and \
                wire.startup_code(packet) != wire.CANCEL_REQUEST:
            # The server takes only TLS over TCP (hostssl); the gate's own hop to it is TLS, so
            # without this a client's plaintext would pass where the server refuses it.
            self._client_w.write(wire.error_response(
                "28000", "the logical gate of a server with TLS accepts only encrypted connections "
                         "(sslmode=require or verify-full)"))
            await self._client_w.drain()
            return None
        reader, writer = await self._connect_upstream()
        writer.write(packet)
        await writer.drain()
        if wire.startup_code(packet) == wire.CANCEL_REQUEST:
            writer.close()
            return None
        return reader, writer

    async def _connect_upstream(self) -> Stream:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(self._up.host, self._up.port, limit=CHUNK), self._up.connect_timeout)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._up.client_tls is None:
            return reader, writer
        writer.write(wire.ssl_request())
        await writer.drain()
        if await reader.readexactly(1) != b"S":
            raise wire.ProtocolError("the server refused TLS although postgresql.tls is set")
        await asyncio.wait_for(writer.start_tls(self._up.client_tls, server_hostname=self._up.host),
                               self._up.connect_timeout)
        return reader, writer

    # -- the two directions -----------------------------------------------------------------

    async def _relay(self, server_r: asyncio.StreamReader, server_w: asyncio.StreamWriter) -> None:
        tasks = [asyncio.create_task(self._pump_client(server_w)),
                 asyncio.create_task(self._read_server(server_r))]
        try:
            await self._write_client()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _pump_client(self, server_w: asyncio.StreamWriter) -> None:
        try:
            while chunk := await self._client_r.read(CHUNK):
                server_w.write(chunk)
                await server_w.drain()
            if server_w.can_write_eof():
                server_w.write_eof()
        except OSError:
            pass

    async def _read_server(self, server_r: asyncio.StreamReader) -> None:
        framer = Framer(wire.parameter_status(GATE_PARAMETER, "on"))
        try:
            while data := await server_r.read(CHUNK):
                for segment in framer.feed(data):
                    await self._put(segment)
        except (OSError, wire.ProtocolError) as e:
            log.debug("gate: server side: %s", e)
        finally:
            self._ended = True
            self._changed.set()

    async def _put(self, item: Segment) -> None:
        while self._queued_bytes >= QUEUE_LIMIT:  # the server waits; its keepalives come later
            self._changed.clear()
            await self._changed.wait()
        self._queue.append(item)
        self._queued_bytes += len(item.data)
        self._changed.set()

    async def _write_client(self) -> None:
        while True:
            if not self._queue:
                if self._ended:
                    return  # the server side ended and everything it sent was delivered
                self._changed.clear()
                await self._changed.wait()
                continue
            head = self._queue[0].hold_until
            confirmed = None if head is None else await self._clock.wait_beyond(head, HOLD_CHECK)
            if head is not None and confirmed is None:
                if self._ended:
                    # The server side is gone (its walsender ended: a fenced or crashed primary,
                    # a cut connection): what is held would only ever go out on a connection no
                    # server serves. Close now, so the subscriber reconnects (to the next
                    # primary) and asks again from its own position, instead of waiting out its
                    # wal_receiver_timeout on a silent connection. Nothing held is sent.
                    return
                if self._clock.in_recovery:
                    # A standby confirms nothing (core/gate.py): rather than hold this client for
                    # ever, tell it where to go. A primary that was demoted under a connection
                    # ended its walsenders, so this is a client that came to a standby.
                    self._client_w.write(wire.error_response("55000", IN_RECOVERY))
                    await self._client_w.drain()
                    return
                self._note_hold(head)
                await self._send(self._take_keepalives())
                continue
            self.holding, self._held_since = None, 0.0
            await self._send(self._take_released(confirmed))

    def _note_hold(self, head: int) -> None:
        """A hold longer than HOLD_WARN is logged (every HOLD_WARN): the synchronous standbys
        are not confirming, and the subscriber waits with them."""
        now = asyncio.get_running_loop().time()
        if self.holding != head or not self._held_since:
            self.holding, self._held_since = head, now
        if now - self._held_since >= HOLD_WARN and now - self._warned_at >= HOLD_WARN:
            self._warned_at = now
            log.warning("logical gate: a subscriber has waited %.0f s for %s to be confirmed by the "
                        "synchronous standbys (confirmed: %s)", now - self._held_since,
                        int_to_lsn(head), int_to_lsn(self._clock.confirmed))

    def _take_released(self, confirmed: int | None) -> list[bytes]:
        """Everything from the head up to the next message that waits beyond `confirmed` (in
        stream order, so a keepalive among them is exactly what the server sent)."""
        out: list[bytes] = []
        while self._queue:
            item = self._queue[0]
            if item.hold_until is not None and (confirmed is None or item.hold_until > confirmed):
                break
            self._queue.popleft()
            self._queued_bytes -= len(item.data)
            if item.xlog_end is not None:
                self._delivered = max(self._delivered, item.xlog_end)
            out.append(item.data)
        return out

    def _take_keepalives(self) -> list[bytes]:
        """While the head is held: the keepalives queued behind it, to send now, claiming no more
        than what was delivered (the server asks for replies and ends a silent connection)."""
        keep = [i for i in self._queue if i.keepalive]
        for i in keep:
            self._queue.remove(i)
            self._queued_bytes -= len(i.data)
        return [wire.clamp_keepalive(i.data, self._delivered) for i in keep]

    async def _send(self, out: list[bytes]) -> None:
        self._changed.set()  # room in the queue for the reader
        if out:
            self._client_w.write(b"".join(out))
            await self._client_w.drain()
