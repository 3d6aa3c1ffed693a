"""Cut what the server sends into segments for the gate's queue, without a Python object per
message: a table copy is one CopyData per row, and per-message reads and queue items held the
gate to a fifth of a direct connection's throughput.

A segment is a run of whole messages that travel together. It waits for the highest position
any of its messages waits for: XLogData waits for its start, and a new slot's DataRow for the
slot's consistent point. Keepalives are segments of their own, so a held queue can let them
pass (relay.py). The gate's ParameterStatus goes in before the first ReadyForQuery.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pgwarden.gate import wire


@dataclass
class Segment:
    data: bytes
    hold_until: int | None = None  # the confirmed position the whole segment waits for
    xlog_end: int | None = None  # the highest XLogData start in it (keepalives are clamped to it)
    keepalive: bool = False


class Framer:
    def __init__(self, announce: bytes) -> None:
        self._pending = b""
        self._announce = announce  # sent once, before the first ReadyForQuery
        self._slot_answer = False  # the last RowDescription was CREATE_REPLICATION_SLOT's

    def feed(self, data: bytes) -> list[Segment]:
        """The segments `data` completes; an incomplete message waits for the next call."""
        buf = self._pending + data if self._pending else data
        out: list[Segment] = []
        pos = start = 0
        hold: int | None = None
        xlog: int | None = None
        size = len(buf)
        unpack = struct.unpack_from
        while size - pos >= 5:
            kind = buf[pos]
            (length,) = unpack("!I", buf, pos + 1)
            if not 4 <= length <= wire.MAX_MESSAGE:
                raise wire.ProtocolError(f"message {chr(kind)!r} of {length} bytes")
            end = pos + 1 + length
            if end > size:
                break
            if kind == 0x64 and length >= 5:  # 'd' CopyData
                sub = buf[pos + 5]
                if sub == 0x77 and length >= 13:  # 'w' XLogData
                    (at,) = unpack("!Q", buf, pos + 6)
                    hold = at if hold is None or at > hold else hold
                    xlog = at if xlog is None or at > xlog else xlog
                elif sub == 0x6B and length >= 22:  # 'k' keepalive: a segment of its own
                    if pos > start:
                        out.append(Segment(buf[start:pos], hold, xlog))
                    out.append(Segment(buf[pos:end], keepalive=True))
                    start, hold, xlog = end, None, None
            elif kind == 0x54:  # 'T' RowDescription
                cols = wire.row_description(buf[pos:end])
                self._slot_answer = cols[:2] == wire.SLOT_COLUMNS[:2]
            elif kind == 0x44 and self._slot_answer:  # 'D': the new slot's row
                point = wire.consistent_point(buf[pos:end], wire.SLOT_COLUMNS)
                if point is not None:
                    hold = point if hold is None or point > hold else hold
            elif kind == 0x5A:  # 'Z' ReadyForQuery
                self._slot_answer = False
                if self._announce:
                    if pos > start:
                        out.append(Segment(buf[start:pos], hold, xlog))
                    out.append(Segment(self._announce))
                    start, hold, xlog = pos, None, None
                    self._announce = b""
            pos = end
        if pos > start:
            out.append(Segment(buf[start:pos], hold, xlog))
        self._pending = buf[pos:]
        return out
