"""gate/wire and gate/framer: the fields the gate reads and the segments it queues, on messages
built the way the server builds them, cut at every possible place."""

from __future__ import annotations

import asyncio
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgwarden.gate import wire
from pgwarden.gate.framer import Framer, Segment

ANNOUNCE = wire.parameter_status("pgwarden_logical_gate", "on")


def xlogdata(start: int, payload: bytes = b"C") -> bytes:
    return wire.message(b"d", b"w" + struct.pack("!QQQ", start, start, 0) + payload)


def keepalive(wal_end: int, reply: bool = True) -> bytes:
    return wire.message(b"d", b"k" + struct.pack("!QQ?", wal_end, 123, reply))


def row_description(names: list[str]) -> bytes:
    body = struct.pack("!H", len(names))
    for n in names:
        body += n.encode() + b"\0" + struct.pack("!IhIhih", 0, 0, 25, -1, -1, 0)
    return wire.message(b"T", body)


def data_row(values: list[bytes | None]) -> bytes:
    body = struct.pack("!H", len(values))
    for v in values:
        body += struct.pack("!i", -1) if v is None else struct.pack("!i", len(v)) + v
    return wire.message(b"D", body)


READY = wire.message(b"Z", b"I")
COPY_ROW = wire.message(b"d", b"1\tabc\n")


def test_a_keepalive_is_lowered_to_the_limit_and_never_raised() -> None:
    msg = keepalive(500)
    low = wire.clamp_keepalive(msg, 200)
    assert struct.unpack_from("!Q", low, 6)[0] == 200
    assert low[:6] == msg[:6] and low[14:] == msg[14:]  # the same length, time and reply flag
    assert wire.clamp_keepalive(msg, 900) == msg


def test_a_new_slots_consistent_point() -> None:
    cols = wire.row_description(row_description(list(wire.SLOT_COLUMNS)))
    assert cols == wire.SLOT_COLUMNS
    row = data_row([b"sub", b"16/B374D848", b"00000003-00000002-1", b"pgoutput"])
    assert wire.consistent_point(row, cols) == (0x16 << 32) | 0xB374D848
    assert wire.consistent_point(data_row([b"x", None]), cols) is None
    assert wire.consistent_point(row, ("id", "name")) is None  # any other query's rows pass
    with pytest.raises(wire.ProtocolError):
        wire.consistent_point(data_row([b"sub", b"not-an-lsn"]), cols)


def test_segments_hold_for_their_highest_position_and_keepalives_stand_alone() -> None:
    f = Framer(ANNOUNCE)
    stream = READY + xlogdata(10) + xlogdata(30) + keepalive(40) + xlogdata(50) + COPY_ROW
    segs = f.feed(stream)
    assert [s.data for s in segs] == [ANNOUNCE, READY + xlogdata(10) + xlogdata(30), keepalive(40),
                                      xlogdata(50) + COPY_ROW]
    assert [(s.hold_until, s.xlog_end, s.keepalive) for s in segs] == [
        (None, None, False), (30, 30, False), (None, None, True), (50, 50, False)]
    assert f.feed(READY) == [Segment(READY)]  # announced once


def test_only_the_slot_answers_row_waits_for_the_consistent_point() -> None:
    f = Framer(b"")
    slot = row_description(list(wire.SLOT_COLUMNS)) + data_row([b"s", b"0/500", b"snap", b"pgoutput"])
    other = row_description(["slot_name", "x"]) + data_row([b"s", b"0/900"])
    segs = f.feed(slot + wire.message(b"C", b"CREATE_REPLICATION_SLOT\0") + READY + other + READY)
    assert [s.hold_until for s in segs] == [0x500]
    assert f.feed(data_row([b"s", b"0/700", b"x", b"y"])) == [Segment(data_row([b"s", b"0/700", b"x", b"y"]))]


@given(st.lists(st.sampled_from(["ready", "w10", "w20", "k", "row"]), max_size=12),
       st.lists(st.integers(1, 40), max_size=8))
def test_cutting_the_stream_anywhere_changes_nothing(kinds: list[str], cuts: list[int]) -> None:
    parts = {"ready": READY, "w10": xlogdata(10), "w20": xlogdata(20), "k": keepalive(99), "row": COPY_ROW}
    stream = b"".join(parts[k] for k in kinds)
    whole = Framer(ANNOUNCE).feed(stream)
    f, got, pos = Framer(ANNOUNCE), [], 0
    for c in cuts:
        got += f.feed(stream[pos:pos + c])
        pos += c
    got += f.feed(stream[pos:])
    assert b"".join(s.data for s in got) == b"".join(s.data for s in whole)
    # every XLogData is held for at least its own start, whatever the cuts
    for s in got:
        for at in (10, 20):
            if xlogdata(at) in s.data:
                assert s.hold_until is not None and s.hold_until >= at
    assert [s.data for s in got if s.keepalive] == [keepalive(99)] * kinds.count("k")


def test_framing_refuses_what_is_not_the_protocol() -> None:
    async def startup(data: bytes) -> bytes:
        r = asyncio.StreamReader()
        r.feed_data(data)
        r.feed_eof()
        return await wire.read_startup(r)
    assert asyncio.run(startup(wire.ssl_request())) == wire.ssl_request()
    assert wire.startup_code(wire.ssl_request()) == wire.SSL_REQUEST
    with pytest.raises(wire.ProtocolError, match="sslnegotiation=direct"):
        asyncio.run(startup(b"\x16\x03\x01\x00\x10" + bytes(16)))
    with pytest.raises(wire.ProtocolError):
        asyncio.run(startup(struct.pack("!I", 3) + b"abcd"))
    with pytest.raises(wire.ProtocolError):
        Framer(b"").feed(b"d" + struct.pack("!I", 2))
