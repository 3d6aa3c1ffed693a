"""Raw HTTP/1.1 for the transport tests: requests built byte by byte (with the test credentials
unless told otherwise) and replies read off the socket without an HTTP client's help."""

from __future__ import annotations

import json
import socket
from typing import BinaryIO

from .env import AUTH, Env

# The server requires credentials (tests/api/env.py): requests that should reach a route carry them.
AUTH_LINE = f"Authorization: {AUTH['Authorization']}".encode()


def authed(raw: bytes) -> bytes:
    """A raw request with the credentials added after its Host line."""
    return raw.replace(b"Host: x\r\n", b"Host: x\r\n" + AUTH_LINE + b"\r\n", 1)


def connect(env: Env, timeout: float = 10.0) -> socket.socket:
    port = int(env.server.url.rsplit(":", 1)[1])
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def request(method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
            version: str = "HTTP/1.1", auth: bool = True) -> bytes:
    lines = [f"{method} {path} {version}", "Host: test", *([AUTH_LINE.decode()] if auth else [])]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


def chunked(*chunks: bytes, trailer: bytes = b"") -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n" + trailer + b"\r\n"


class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> object:
        return json.loads(self.body)


def read_reply(f: BinaryIO, head: bool = False) -> Reply:
    """One response off a connection (Content-Length framing, which is all the API sends)."""
    status_line = f.readline()
    assert status_line.startswith(b"HTTP/1.1 "), status_line
    headers: dict[str, str] = {}
    while (line := f.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = b"" if head else f.read(int(headers["content-length"]))
    return Reply(int(status_line.split()[1]), headers, body)


def closed(sock: socket.socket, f: BinaryIO) -> bool:
    """Whether the server closed the connection (after everything it sent has been read)."""
    try:
        return f.read(1) == b""
    except ConnectionResetError:
        return True
