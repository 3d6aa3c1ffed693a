"""The few pieces of PostgreSQL's frontend/backend protocol the logical gate reads or writes.

Written here rather than taken from a library: the gate relays bytes and only looks at message
boundaries and three fields (XLogData's start position, a keepalive's end position, a new slot's
consistent point). psycopg's protocol code sits inside libpq and is not exposed for relaying, and
a full protocol library would parse (and allocate) every message the gate passes through.

References: PostgreSQL's "Frontend/Backend Protocol" ("Message Formats", "Streaming Replication
Protocol": XLogData 'w' and Primary keepalive 'k' inside CopyData).
"""

from __future__ import annotations

import asyncio
import struct

from pgwarden.core.model import lsn_to_int

SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102
MAX_STARTUP = 10_000  # the server's own limit for a startup packet
MAX_MESSAGE = 1 << 30  # the server's limit for one message


class ProtocolError(Exception):
    """The peer sent something that is not the protocol the gate relays."""


async def read_startup(reader: asyncio.StreamReader) -> bytes:
    """One untyped startup-phase packet (length included): StartupMessage, SSLRequest,
    GSSENCRequest or CancelRequest."""
    head = await reader.readexactly(4)
    if head[0] == 0x16:
        raise ProtocolError("a TLS handshake without SSLRequest (sslnegotiation=direct) is not "
                            "supported by the gate; use the default sslnegotiation=postgres")
    (length,) = struct.unpack("!I", head)
    if not 8 <= length <= MAX_STARTUP:
        raise ProtocolError(f"startup packet of {length} bytes")
    return head + await reader.readexactly(length - 4)


def startup_code(packet: bytes) -> int:
    (code,) = struct.unpack_from("!I", packet, 4)
    return int(code)


def ssl_request() -> bytes:
    return struct.pack("!II", 8, SSL_REQUEST)


def message(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


def error_response(sqlstate: str, text: str) -> bytes:
    """A FATAL ErrorResponse, as the server sends one before closing a connection it refuses."""
    fields = b"".join(k + v.encode() + b"\0" for k, v in
                      ((b"S", "FATAL"), (b"V", "FATAL"), (b"C", sqlstate), (b"M", text)))
    return message(b"E", fields + b"\0")


def parameter_status(name: str, value: str) -> bytes:
    return message(b"S", name.encode() + b"\0" + value.encode() + b"\0")


# -- CopyData ('d') payloads of the replication stream --------------------------------------------


def clamp_keepalive(msg: bytes, limit: int) -> bytes:
    """The keepalive with its walEnd lowered to `limit`: a subscriber with nothing pending reports
    a keepalive's walEnd as flushed, and the gate must not let it claim what it has not got."""
    (wal_end,) = struct.unpack_from("!Q", msg, 6)
    if wal_end <= limit:
        return msg
    return msg[:6] + struct.pack("!Q", limit) + msg[14:]


# -- the answer to CREATE_REPLICATION_SLOT ------------------------------------------------------

SLOT_COLUMNS = ("slot_name", "consistent_point", "snapshot_name", "output_plugin")


def row_description(msg: bytes) -> tuple[str, ...]:
    """The column names of a RowDescription ('T')."""
    (count,) = struct.unpack_from("!H", msg, 5)
    names: list[str] = []
    pos = 7
    for _ in range(count):
        end = msg.index(b"\0", pos)
        names.append(msg[pos:end].decode(errors="replace"))
        pos = end + 1 + 18  # table oid, column number, type oid, size, modifier, format
    return tuple(names)


def data_row(msg: bytes) -> list[bytes | None]:
    """The values of a DataRow ('D') as text bytes (None for NULL)."""
    (count,) = struct.unpack_from("!H", msg, 5)
    values: list[bytes | None] = []
    pos = 7
    for _ in range(count):
        (size,) = struct.unpack_from("!i", msg, pos)
        pos += 4
        if size < 0:
            values.append(None)
        else:
            values.append(msg[pos:pos + size])
            pos += size
    return values


def consistent_point(msg: bytes, columns: tuple[str, ...]) -> int | None:
    """A new logical slot's consistent point from its DataRow: the exported snapshot (an initial
    table copy reads through it) shows exactly the transactions committed before it."""
    if columns[:2] != SLOT_COLUMNS[:2]:
        return None
    values = data_row(msg)
    raw = values[1] if len(values) > 1 else None
    try:
        return lsn_to_int(raw.decode()) if raw else None
    except ValueError:
        raise ProtocolError(f"consistent point {raw!r}") from None
