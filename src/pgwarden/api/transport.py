"""The HTTP/1.1 side of the REST API: the connection handler (framing, body limits, answers, access
log) and the listening sockets, which hand each parsed Request to a dispatch function.

Transport: the standard library's ThreadingHTTPServer, not an async framework. That is a deliberate
choice, not an omission:
- footprint: the agent is meant to idle near Patroni's resident size, and importing aiohttp alone
  added ~11 MB of RSS; http.server is a few hundred KB of code that the interpreter mostly already has;
- the traffic is tiny: health checks (HAProxy, Kubernetes probes, load balancers) are GET/HEAD/OPTIONS
  with no body, a few a second per checker, plus the odd operator request; a thread per connection
  is plenty and lets blocking store calls run in the request's own thread with `store_timeout`;
- it is what Patroni serves its REST API with, so its clients' expectations hold.
What a framework would have given us is done explicitly, here and in ApiServer: one accept thread
(no polling, it sleeps until a connection or stop()), daemon request threads, a socket timeout so a
silent client cannot hold a thread, a 1 MiB body cap (413), Content-Length on every response
(keep-alive stays in sync), JSON errors for malformed requests, and an access log on
"pgwarden.api.access".
"""

from __future__ import annotations

import itertools
import logging
import re
import socket
import socketserver
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pgwarden import __version__
from pgwarden.api.messages import Disconnect, HttpError, Request, Response, Route, json_response

# The name the API's log lines have always carried (the agent's log format shows it).
log = logging.getLogger("pgwarden.api.server")
access_log = logging.getLogger("pgwarden.api.access")

_MAX_BODY = 1024 * 1024
_MAX_LINE = 65536
_REQUEST_TIMEOUT = 10.0
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
_SLASH = re.compile(r"%2[Ff]")


def _unquote(part: str) -> str:
    try:
        return urllib.parse.unquote(part, errors="strict")
    except UnicodeDecodeError:
        return part


def _decode_path(raw: str) -> str:
    """Percent-decoded, except %2F (a slash inside a segment is not a separator); undecodable
    sequences stay as sent."""
    return "%2F".join(_unquote(p) for p in _SLASH.split(raw))


def _split_target(target: str) -> tuple[str, str] | None:
    """(path, raw query) of an origin-form or absolute-form request target; None if neither."""
    if not target.startswith("/"):
        if not target.lower().startswith(("http://", "https://")):
            return None
        try:
            parts = urllib.parse.urlsplit(target)
        except ValueError:
            return None
        target = (parts.path or "/") + ("?" + parts.query if parts.query else "")
    path, _, query = target.partition("#")[0].partition("?")
    return path, query


def _query(raw: str) -> dict[str, str]:
    query: dict[str, str] = {}
    for key, value in urllib.parse.parse_qsl(raw, keep_blank_values=True):
        query.setdefault(key, value)
    return query


class Handler(BaseHTTPRequestHandler):
    """One connection: reads requests (keep-alive), hands each to its Listener's dispatch (the
    ApiServer's), writes the answer in one piece with Content-Length always set."""

    protocol_version = "HTTP/1.1"
    server_version = f"pgwarden/{__version__}"
    sys_version = ""
    timeout = _REQUEST_TIMEOUT  # on the socket: a silent client is dropped, not waited for
    disable_nagle_algorithm = True

    _started = 0.0
    _length: int | None = 0  # request body: bytes announced; None = chunked
    _body: bytes | None = None

    @property
    def _dispatch(self) -> Route:
        server = self.server
        assert isinstance(server, Listener)
        return server.dispatch

    def handle_one_request(self) -> None:
        self._started = time.time()
        self._length, self._body = 0, None
        self.requestline, self.request_version, self.command = "", "HTTP/1.1", ""
        try:
            self.raw_requestline = self.rfile.readline(_MAX_LINE + 1)
            if not self.raw_requestline:
                self.close_connection = True
                return
            if len(self.raw_requestline) > _MAX_LINE:
                self.send_error(414, "request line too long")
                return
            if self.parse_request():  # on failure it has answered (send_error) or there is nothing to answer
                self._serve()
        except (OSError, Disconnect) as e:  # timeouts, resets, broken pipes
            log.debug("REST API: dropping connection from %s: %r", self.client_address[0], e)
            self.close_connection = True

    def _serve(self) -> None:
        if self.request_version == "HTTP/0.9":
            self.request_version = "HTTP/1.0"
            self.send_error(400, "HTTP/0.9 requests are not supported")
            return
        if not _TOKEN.fullmatch(self.command):
            self.send_error(400, f"invalid method {self.command!r}")
            return
        split = _split_target(self.requestline.split()[1])  # unlike self.path, keeps a leading //
        if split is None:
            self.send_error(400, "invalid request target")
            return
        error = self._framing()
        if error is not None:
            self.send_error(400, error)
            return
        raw_path, raw_query = split
        request = Request(self.command, _decode_path(raw_path), _query(raw_query), self._read_body)
        response = self._dispatch(request)
        if self._body is None and self._length is not None and self._length > _MAX_BODY:
            self.close_connection = True  # an unread body too big to skip
        self._reply(response, head=self.command == "HEAD")
        if self._body is None and self._length != 0 and not self.close_connection:
            try:  # skip the unread body so the next request on this connection starts in sync
                self._read_body()
            except HttpError:
                self.close_connection = True

    def _framing(self) -> str | None:
        """How the request body is delimited; an error message when that is ambiguous or invalid."""
        chunked = self.headers.get("Transfer-Encoding")
        lengths = self.headers.get_all("Content-Length") or []
        if chunked is not None:
            if chunked.strip().lower() != "chunked":
                return f"unsupported Transfer-Encoding: {chunked}"
            if lengths:
                return "both Content-Length and Transfer-Encoding are set"
            self._length = None
        elif lengths:
            values = {v.strip() for v in lengths}
            value = values.pop()
            if values or not value.isascii() or not value.isdigit() or len(value) > 18:
                return "invalid Content-Length"
            self._length = int(value)
        return None

    # -- the request body -----------------------------------------------------------------------

    def _read_body(self) -> bytes:
        if self._body is None:
            try:
                self._body = self._read_chunked() if self._length is None else self._read_exactly()
            except HttpError:
                self.close_connection = True  # the rest of the body is still on the wire
                raise
        return self._body

    def _read_exactly(self) -> bytes:
        assert self._length is not None
        if self._length > _MAX_BODY:
            raise HttpError(413, "Request Entity Too Large")
        return self._recv(self._length)

    def _recv(self, n: int) -> bytes:
        try:
            data = self.rfile.read(n)
        except OSError as e:
            raise Disconnect(repr(e)) from e
        if len(data) < n:
            raise Disconnect("the client closed the connection mid-body")
        return data

    def _line(self) -> bytes:
        try:
            line = self.rfile.readline(_MAX_LINE + 1)
        except OSError as e:
            raise Disconnect(repr(e)) from e
        if not line:
            raise Disconnect("the client closed the connection mid-body")
        if len(line) > _MAX_LINE:
            raise HttpError(400, "malformed chunked body")
        return line

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            size = self._line().split(b";", 1)[0].strip()
            if not _CHUNK_SIZE.fullmatch(size):
                raise HttpError(400, "malformed chunked body")
            n = int(size, 16)
            if n == 0:
                break
            total += n
            if total > _MAX_BODY:
                raise HttpError(413, "Request Entity Too Large")
            parts.append(self._recv(n))
            if self._line().strip():
                raise HttpError(400, "malformed chunked body")
        while self._line().strip():  # trailer fields, ignored
            pass
        return b"".join(parts)

    # -- answers --------------------------------------------------------------------------------

    def _reply(self, response: Response, *, head: bool = False) -> None:
        """Status line, headers and body in one write; HEAD gets the headers a GET would."""
        reason = self.responses.get(response.status, ("",))[0]
        lines = [f"HTTP/1.1 {response.status} {reason}",
                 f"Server: {self.version_string()}",
                 f"Date: {self.date_time_string()}"]
        lines += [f"{k}: {v}" for k, v in response.headers.items()]
        lines.append(f"Content-Length: {len(response.body)}")
        if self.close_connection:
            lines.append("Connection: close")
        elif self.request_version == "HTTP/1.0":
            lines.append("Connection: keep-alive")
        payload = b"" if head else response.body
        self.wfile.write("\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + payload)
        self._access(response.status, len(payload))

    def _access(self, status: int, size: int) -> None:
        if not access_log.isEnabledFor(logging.INFO):
            return
        headers = getattr(self, "headers", None)
        referer = headers.get("Referer", "-") if headers is not None else "-"
        agent = headers.get("User-Agent", "-") if headers is not None else "-"
        when = time.strftime("[%d/%b/%Y:%H:%M:%S %z]", time.localtime(self._started))
        access_log.info('%s %s "%s" %d %d "%s" "%s"', self.client_address[0], when,
                        self.requestline or "-", status, size, referer, agent)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Protocol-level failures (bad request line, headers, version): a JSON error like any other,
        and the connection is closed since the rest of the request cannot be trusted."""
        self.close_connection = True
        self._reply(json_response(code, {"error": message or self.responses.get(code, ("error",))[0]}),
                    head=self.command == "HEAD")

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # _access logs every answer, in the format the agent has always used

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("REST API: %s: %s", self.address_string(), format % args)


class Listener(ThreadingHTTPServer):
    """One listening socket. Connections are accepted by ApiServer's accept thread (which watches
    every socket and a wake-up pipe, so it sleeps until there is work) and served on daemon threads
    named pgwarden-api-N."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, family: socket.AddressFamily, address: tuple[Any, ...], dispatch: Route) -> None:
        self.address_family = family
        self.dispatch = dispatch
        self._serial = itertools.count(1)
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(address, Handler)
        self.socket.setblocking(False)

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # as asyncio does
        socketserver.TCPServer.server_bind(self)  # HTTPServer's would do a reverse DNS lookup
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])

    def accept(self) -> None:
        try:
            conn, addr = self.get_request()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return  # nothing after all: the client gave up
        except OSError as e:  # out of descriptors or memory: back off rather than spin
            log.warning("REST API: cannot accept a connection: %s", e)
            time.sleep(0.1)
            return
        self.process_request(conn, addr)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._conns_lock:
            self._conns.add(request)
        thread = threading.Thread(target=self._process, args=(request, client_address),
                                  name=f"pgwarden-api-{next(self._serial)}", daemon=True)
        try:
            thread.start()
        except RuntimeError:
            log.warning("REST API: cannot start a thread for %s; connection dropped", client_address[0])
            self._forget(request)

    def _process(self, request: socket.socket, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self._forget(request)

    def _forget(self, request: socket.socket) -> None:
        with self._conns_lock:
            self._conns.discard(request)
        self.shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            log.debug("REST API: connection from %s failed", client_address[0], exc_info=True)
        else:
            log.exception("REST API: error serving %s", client_address[0])

    def end_connections(self) -> None:
        """Stop reading from every open connection: idle keep-alive connections end at once, a request
        in progress still gets its answer."""
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RD)
            except OSError:
                pass
