"""The HTTP/1.1 the etcd gateway client speaks, written out: a POST's bytes, and the response read
from a kept connection's buffered reader (status, whether the server will close, the body).

Why not `http.client`: its response parses the headers with the `email` package, which was half of
the CPU of each gateway call, and an idle agent makes two to four such calls every loop (issue 16).
Why not h11 (which the REST server uses): framing one request and parsing a typical gateway
answer (7 headers, a 1 KB body) took 54 us of CPU with h11 against 5 us here (measured
2026-12-05, 20,000 calls each, with a fresh h11 Connection per call; reusing one through
`start_next_cycle` was not measured).
This reads only what the client needs (the status, Content-Length or chunked framing,
`Connection: close`), with `http.client`'s limits and error classes, so callers catch the same
`http.client.HTTPException` and `OSError` as before.
"""

from __future__ import annotations

import http.client
from collections.abc import Iterator, Mapping
from typing import BinaryIO

MAX_LINE = 65536  # as http.client's _MAXLINE
MAX_HEADERS = 100  # as http.client's _MAXHEADERS


def encode_post(host_header: str, path: str, headers: Mapping[str, str], body: bytes) -> bytes:
    """One POST request, head and body in one buffer (a single send; no Nagle/delayed-ACK wait).
    Raises ValueError for a header that would break the framing, as http.client does."""
    lines = [f"POST {path} HTTP/1.1", f"Host: {host_header}", "Accept-Encoding: identity",
             f"Content-Length: {len(body)}"]
    for name, value in headers.items():
        if _unsafe(name) or _unsafe(value) or ":" in name:
            raise ValueError(f"invalid HTTP header {name!r}")
        lines.append(f"{name}: {value}")
    if _unsafe(path) or " " in path:
        raise ValueError(f"invalid HTTP request path {path!r}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _unsafe(text: str) -> bool:
    return "\r" in text or "\n" in text or "\0" in text


def _line(rfile: BinaryIO) -> bytes:
    line = rfile.readline(MAX_LINE + 1)
    if len(line) > MAX_LINE:
        raise http.client.LineTooLong("header line")
    return line


def read_response(rfile: BinaryIO) -> tuple[int, bool, bytes]:
    """(status, the server will close the connection, body) of the next response on `rfile`.

    Raises http.client.RemoteDisconnected when the server closed without answering (a kept
    connection it dropped), other http.client.HTTPException for a malformed answer, and OSError
    (TimeoutError past the socket's timeout) from the reads."""
    status, will_close, length, chunked = read_head(rfile)
    if 100 <= status < 200 or status in (204, 304):
        return status, will_close, b""
    if chunked:
        return status, will_close, _read_chunked(rfile)
    if length is not None:
        data = rfile.read(length)
        if len(data) < length:
            raise http.client.IncompleteRead(data, length - len(data))
        return status, will_close, data
    return status, True, rfile.read()  # delimited by the server closing


def read_head(rfile: BinaryIO) -> tuple[int, bool, int | None, bool]:
    """(status, the server will close the connection, Content-Length, chunked) of the next
    response's head on `rfile`, which is left at its body; errors as `read_response`."""
    while True:
        status, version = _status_line(rfile)
        length, chunked, close = _headers(rfile)
        if status != 100:  # 100 Continue: the real answer follows (we never ask for one)
            return status, close or version == b"HTTP/1.0", length, chunked


def _status_line(rfile: BinaryIO) -> tuple[int, bytes]:
    line = _line(rfile)
    if not line:
        raise http.client.RemoteDisconnected("Remote end closed connection without response")
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
        raise http.client.BadStatusLine(repr(line))
    try:
        status = int(parts[1])
    except ValueError:
        raise http.client.BadStatusLine(repr(line)) from None
    if not 100 <= status <= 999:
        raise http.client.BadStatusLine(repr(line))
    return status, parts[0]


def _headers(rfile: BinaryIO) -> tuple[int | None, bool, bool]:
    """(Content-Length, chunked, Connection: close) from the header block."""
    length: int | None = None
    chunked = close = False
    for _ in range(MAX_HEADERS + 1):
        line = _line(rfile)
        if line in (b"\r\n", b"\n", b""):
            return length, chunked, close
        name, sep, value = line.partition(b":")
        if not sep:
            raise http.client.HTTPException(f"malformed header line {line[:80]!r}")
        key = name.strip().lower()
        if key == b"content-length":
            try:
                length = int(value.strip())
            except ValueError:
                raise http.client.HTTPException(f"bad Content-Length {value.strip()[:40]!r}") from None
            if length < 0:
                raise http.client.HTTPException(f"bad Content-Length {length}")
        elif key == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif key == b"connection":
            close = b"close" in value.lower()
    raise http.client.HTTPException(f"got more than {MAX_HEADERS} headers")


def _read_chunked(rfile: BinaryIO) -> bytes:
    parts: list[bytes] = []
    try:
        for chunk in iter_chunks(rfile):
            parts.append(chunk)
    except http.client.IncompleteRead as e:
        raise http.client.IncompleteRead(b"".join(parts) + e.partial, e.expected) from None
    return b"".join(parts)


def iter_chunks(rfile: BinaryIO) -> Iterator[bytes]:
    """A chunked body's chunks as they arrive (a stream's messages), then its trailers are read.
    IncompleteRead carries the part of the current chunk that came."""
    while True:
        line = _line(rfile)
        try:
            size = int(line.split(b";", 1)[0], 16)
        except ValueError:
            raise http.client.IncompleteRead(b"") from None
        if size < 0:
            raise http.client.IncompleteRead(b"")
        if size == 0:
            break
        chunk = rfile.read(size)
        if len(chunk) < size:
            raise http.client.IncompleteRead(chunk, size - len(chunk))
        if _line(rfile) not in (b"\r\n", b"\n"):
            raise http.client.IncompleteRead(chunk)
        yield chunk
    for _ in range(MAX_HEADERS + 1):  # trailers, up to the blank line
        if _line(rfile) in (b"\r\n", b"\n", b""):
            return
    raise http.client.HTTPException(f"got more than {MAX_HEADERS} trailer lines")
