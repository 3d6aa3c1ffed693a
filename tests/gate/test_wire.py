"""gate/wire: the three fields the gate reads, on messages built the way the server builds them."""

from __future__ import annotations

import asyncio
import struct

import pytest

from pgwarden.gate import wire


def xlogdata(start: int, payload: bytes = b"C") -> bytes:
    return wire.message(b"d", b"w" + struct.pack("!QQQ", start, start, 0) + payload)


def keepalive(wal_end: int, reply: bool = True) -> bytes:
    return wire.message(b"d", b"k" + struct.pack("!QQ?", wal_end, 123, reply))


def test_xlogdata_start_and_nothing_else() -> None:
    assert wire.xlog_start(xlogdata(0x1_0000_0040)) == 0x1_0000_0040
    assert wire.xlog_start(keepalive(5)) is None
    assert wire.xlog_start(wire.message(b"Z", b"I")) is None


def test_a_keepalive_is_lowered_to_the_limit_and_never_raised() -> None:
    msg = keepalive(500)
    assert wire.is_keepalive(msg) and not wire.is_keepalive(xlogdata(1))
    low = wire.clamp_keepalive(msg, 200)
    assert struct.unpack_from("!Q", low, 6)[0] == 200
    assert low[:6] == msg[:6] and low[14:] == msg[14:]  # the same length, time and reply flag
    assert wire.clamp_keepalive(msg, 900) == msg


def _row_description(names: list[str]) -> bytes:
    body = struct.pack("!H", len(names))
    for n in names:
        body += n.encode() + b"\0" + struct.pack("!IhIhih", 0, 0, 25, -1, -1, 0)
    return wire.message(b"T", body)


def _data_row(values: list[bytes | None]) -> bytes:
    body = struct.pack("!H", len(values))
    for v in values:
        body += struct.pack("!i", -1) if v is None else struct.pack("!i", len(v)) + v
    return wire.message(b"D", body)


def test_a_new_slots_consistent_point() -> None:
    cols = wire.row_description(_row_description(list(wire.SLOT_COLUMNS)))
    assert cols == wire.SLOT_COLUMNS
    row = _data_row([b"sub", b"16/B374D848", b"00000003-00000002-1", b"pgoutput"])
    assert wire.consistent_point(row, cols) == (0x16 << 32) | 0xB374D848
    assert wire.consistent_point(_data_row([b"x", None]), cols) is None
    assert wire.consistent_point(row, ("id", "name")) is None  # any other query's rows pass
    with pytest.raises(wire.ProtocolError):
        wire.consistent_point(_data_row([b"sub", b"not-an-lsn"]), cols)


def _read(data: bytes, fn: str) -> object:
    async def go() -> object:
        r = asyncio.StreamReader()
        r.feed_data(data)
        r.feed_eof()
        return await getattr(wire, fn)(r)
    return asyncio.run(go())


def test_framing_refuses_what_is_not_the_protocol() -> None:
    assert _read(wire.ssl_request(), "read_startup") == wire.ssl_request()
    assert wire.startup_code(wire.ssl_request()) == wire.SSL_REQUEST
    with pytest.raises(wire.ProtocolError, match="sslnegotiation=direct"):
        _read(b"\x16\x03\x01\x00\x10" + bytes(16), "read_startup")
    with pytest.raises(wire.ProtocolError):
        _read(struct.pack("!I", 3) + b"abcd", "read_startup")
    assert _read(xlogdata(7), "read_message") == (ord("d"), xlogdata(7))
    with pytest.raises(wire.ProtocolError):
        _read(b"d" + struct.pack("!I", 2), "read_message")
