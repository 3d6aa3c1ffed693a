"""The HTTP/1.1 side of the REST API: the connection handler and the listening sockets, which hand
each parsed Request to a dispatch function and send back its Response.

Why h11 does the framing (request line and headers, Content-Length and chunked bodies, keep-alive,
pipelining, HEAD, 100-continue): that parsing is the code most exposed to hostile input, and it used
to be ours, on top of http.server. h11 is maintained, small, pure Python with no dependencies, and
sans-IO: it never touches a socket, so it runs unchanged under our threads. It also fits the agent's
RSS budget (the agent means to idle near Patroni's resident size; importing aiohttp alone added
~11 MB): measured in a fresh interpreter, importing the agent (pgwarden.agent.runner) went from
~41.9 to ~41.5 MB, since h11 costs about what dropping http.server (and the http.client and email
modules it drags in) saves. h11 >= 0.16 is required: earlier versions accepted malformed chunked
bodies (CVE-2025-43859).

Why threads, not an async framework: the traffic is tiny (health checks from HAProxy, Kubernetes or
load balancers, a few a second per checker, plus the odd operator request), so a thread per
connection is plenty, and blocking store calls can run in the request's own thread with
`store_timeout`.

What this module still does itself:
- sockets and threads: one accept thread in HttpService (service.py; it sleeps until a connection or
  stop()), a daemon thread per connection (pgwarden-api-N) that reads bytes and feeds them to h11;
- limits: at most `restapi.max_connections` connections (limits.py: the rest wait in the
  listen backlog, and when full, connections waiting for a request head are shed), a 64 KiB
  request head (414 for a request line that long, 431 for headers) and at most 100
  header fields, a 1 MiB body cap (413, then the connection is closed), a deadline for each request's
  head (10 s from the start of the wait; and 5 s to send its first byte, which ends idle keep-alive
  connections) and another for its body, so a client that is
  silent or dribbles a byte at a time cannot hold a thread, and a send timeout;
- what h11 leaves to a server: refusing Content-Length together with Transfer-Encoding (a smuggling
  attempt), request targets other than origin or absolute form, percent-decoding, the query;
- answers: every error a JSON {"error": ...}, Content-Length always set, Server and Date headers; a
  protocol error h11 raises is answered with its status hint (400 unless it says otherwise) and the
  connection closed, after a short lingering read so the client gets the answer rather than a reset;
- the access log on "pgwarden.api.access", debug lines on "pgwarden.api.server";
- TLS (restapi.tls): each accepted socket is wrapped in its connection thread, the handshake
  bounded by the request deadline, so a silent or plain-HTTP client never blocks the accept loop;
  the context comes from a callable (a tls.contexts.ContextSource) asked once per connection, so
  rotated certificates apply to new connections while open ones keep theirs;
- shutdown: end_connections() ends idle keep-alive connections at once, a request in progress still
  gets its answer; IPv6 sockets are IPv6-only (an IPv4 address gets its own socket).
"""

from __future__ import annotations

import itertools
import logging
import re
import socket
import socketserver
import ssl
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

import h11

from pgwarden import __version__
from pgwarden.api.limits import ConnectionSlots, Slot
from pgwarden.api.messages import Disconnect, HttpError, Request, Response, Route, json_response

# The name the API's log lines have always carried (the agent's log format shows it).
log = logging.getLogger("pgwarden.api.server")
access_log = logging.getLogger("pgwarden.api.access")

_MAX_BODY = 1024 * 1024
_MAX_HEAD = 65536  # request line and headers together
_MAX_HEADERS = 100
_REQUEST_TIMEOUT = 10.0  # for a request's head (including waiting for it), again for its body, and sends
_IDLE_TIMEOUT = 5.0  # for the first byte of a request: an idle keep-alive connection ends then
_LINGER = 1.0  # reading (and dropping) what a client still sends after an error answer
_RECV_SIZE = 65536
_LOG_HEAD = 1024  # bytes of an unparsable request kept for its access log line
_SERVER = f"pgwarden/{__version__}"
_SLASH = re.compile(r"%2[Ff]")
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


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


def _fields(headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """h11's header list (names already lower-case) as a mapping; a repeated field's values joined
    by ", " as HTTP allows, so a second Authorization cannot slip past the first."""
    fields: dict[str, str] = {}
    for name, value in headers:
        key, text = name.decode("ascii"), value.decode("latin-1")
        fields[key] = f"{fields[key]}, {text}" if key in fields else text
    return fields


def _http_date(when: float) -> str:
    t = time.gmtime(when)
    return (f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year} "
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT")


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b""


def _printable(raw: bytes) -> str:
    """The first line of what a client sent, safe for a log line."""
    line = raw.split(b"\n", 1)[0].rstrip(b"\r").decode("latin-1")
    return _UNPRINTABLE.sub(lambda m: f"\\x{ord(m.group()):02x}", line)


class Handler(socketserver.BaseRequestHandler):
    """One connection: reads bytes, feeds them to an h11.Connection, hands each request to its
    Listener's dispatch (the ApiServer's) and sends the answer through h11, as long as keep-alive
    lasts."""

    request: socket.socket
    server: Listener

    def setup(self) -> None:
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_HEAD)
        self._timeout = self.server.request_timeout
        self._idle_timeout = min(self.server.idle_timeout, self._timeout)
        self._slot = self.server.slot_of(self.request)
        self._new_cycle()

    def _new_cycle(self) -> None:
        self._started = time.time()
        self._waiting_from = time.monotonic()
        self._slot.waiting()
        self._requestline = ""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_only = False  # a HEAD request: answered without a body
        self._length: int | None = 0  # the request body: bytes announced; None = chunked
        self._body: bytes | None = None
        # Our decision to end the connection after this answer: the client may still be sending
        # (an unread or refused body, a request we could not parse), so closing lingers.
        self._close = False
        pending = self._conn.trailing_data[0]  # what a pipelining client already sent
        # h11 checks max_incomplete_event_size only when it needs more data, so a head that arrives
        # whole could exceed it: never hand it more than _MAX_HEAD + 1 bytes before the request.
        self._head_budget = _MAX_HEAD + 1 - len(pending)
        # What arrives before the request is parsed, for the access log if it cannot be.
        self._raw = bytearray(pending[:_LOG_HEAD])
        self._got_bytes = bool(pending)

    def handle(self) -> None:
        try:
            while self._cycle():
                self._conn.start_next_cycle()
                self._new_cycle()
        except (OSError, Disconnect) as e:  # timeouts, resets, broken pipes
            log.debug("REST API: dropping connection from %s: %r", self.client_address[0], e)
            return
        if self._close:
            self._drain_before_close()

    # -- one request ----------------------------------------------------------------------------

    def _cycle(self) -> bool:
        """Read one request, answer it; whether the connection can carry another."""
        try:
            event = self._next_event(time.monotonic() + self._timeout, head=True)
        except h11.RemoteProtocolError as e:
            self._protocol_error(e)
            return False
        if not isinstance(event, h11.Request):
            return False  # the client closed the connection between requests
        self._slot.busy()
        method = event.method.decode("ascii")  # h11 checked: a token
        target = event.target.decode("ascii")  # h11 checked: visible ASCII only
        self._requestline = f"{method} {target} HTTP/{event.http_version.decode('ascii')}"
        self._headers = list(event.headers)
        self._head_only = method == "HEAD"
        split = _split_target(target)
        error = self._check_framing()
        if error is not None:
            self._error(*error)
            return False
        if split is None:
            self._error(400, "invalid request target")
            return False
        raw_path, raw_query = split
        response = self._dispatch(Request(method, _decode_path(raw_path), _query(raw_query),
                                          self._read_body, _fields(self._headers)))
        unread = self._conn.their_state is h11.SEND_BODY and not self._close
        if unread and self._length != 0 and (
                (self._length or 0) > _MAX_BODY or self._conn.they_are_waiting_for_100_continue):
            self._close = True  # too big to skip, or a body the client has not sent and may never send
        self._reply(response)
        if self._close:
            return False
        if self._conn.their_state is h11.SEND_BODY:
            try:  # skip the unread body so the next request on this connection starts in sync
                self._receive_body(keep=False)
            except HttpError:
                return False
        return self._conn.our_state is h11.DONE and self._conn.their_state is h11.DONE

    @property
    def _dispatch(self) -> Route:
        return self.server.dispatch

    def _check_framing(self) -> tuple[int, str] | None:
        """What h11 leaves to the server; an error (status, message) when the request is refused."""
        if len(self._headers) > _MAX_HEADERS:
            return 431, f"more than {_MAX_HEADERS} header fields"
        names = {name for name, _ in self._headers}
        if b"transfer-encoding" in names:
            if b"content-length" in names:  # h11 would let chunked win: refuse the ambiguity
                return 400, "both Content-Length and Transfer-Encoding are set"
            self._length = None
        elif b"content-length" in names:
            self._length = int(self._header(b"content-length"))  # h11 checked: digits, one value
        return None

    def _header(self, name: bytes, default: str = "-") -> str:
        for key, value in self._headers:
            if key == name:
                return value.decode("latin-1")
        return default

    def _next_event(self, deadline: float, head: bool = False) -> Any:
        """The next h11 event, reading from the socket until `deadline` when h11 needs more; `head`:
        while waiting for a request (its line and headers)."""
        while True:
            event = self._conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            until = deadline
            if head and not self._got_bytes:  # nothing of this request yet: the idle deadline
                until = min(deadline, self._waiting_from + self._idle_timeout)
            remaining = until - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("the client took too long to send its request")
            self.request.settimeout(remaining)
            if not head:
                data = self.request.recv(_RECV_SIZE)
            else:
                data = self.request.recv(max(1, min(_RECV_SIZE, self._head_budget)))
                self._head_budget -= len(data)
                self._got_bytes = True
                if len(self._raw) < _LOG_HEAD:
                    self._raw += data[:_LOG_HEAD - len(self._raw)]
            self._conn.receive_data(data)  # b"": the client closed its side

    # -- the request body -----------------------------------------------------------------------

    def _read_body(self) -> bytes:
        """Request.read: the whole body, read on first use; HttpError 413 past the cap, 400 when
        malformed (the connection is then closed), Disconnect when the client is gone."""
        if self._body is None:
            if self._length is not None and self._length > _MAX_BODY:
                self._close = True
                raise HttpError(413, "Request Entity Too Large")
            if self._conn.they_are_waiting_for_100_continue:
                try:
                    self._send(self._conn.send(h11.InformationalResponse(status_code=100, headers=[])))
                except OSError as e:
                    raise Disconnect(repr(e)) from e
            self._body = self._receive_body(keep=True)
        return self._body

    def _receive_body(self, *, keep: bool) -> bytes:
        deadline = time.monotonic() + self._timeout
        parts: list[bytes] = []
        total = 0
        try:
            while True:
                event = self._next_event(deadline)
                if isinstance(event, h11.Data):
                    total += len(event.data)
                    if total > _MAX_BODY:
                        self._close = True
                        raise HttpError(413, "Request Entity Too Large")
                    if keep:
                        parts.append(event.data)
                elif isinstance(event, h11.EndOfMessage):  # trailer fields, if any, are ignored
                    return b"".join(parts)
                else:
                    raise Disconnect(f"unexpected {event!r} in a request body")
        except h11.RemoteProtocolError as e:
            self._close = True
            if self._conn.trailing_data[1]:
                raise Disconnect("the client closed the connection mid-body") from e
            raise HttpError(e.error_status_hint, f"malformed request body: {e}") from e
        except OSError as e:
            raise Disconnect(repr(e)) from e

    # -- answers --------------------------------------------------------------------------------

    def _reply(self, response: Response) -> None:
        """Status line, headers and body in one send; HEAD gets the headers a GET would."""
        headers = [("Server", _SERVER), ("Date", _http_date(time.time())), *response.headers.items(),
                   ("Content-Length", str(len(response.body)))]
        if self._close:
            headers.append(("Connection", "close"))
        payload = b"" if self._head_only else response.body
        data = self._conn.send(h11.Response(status_code=response.status, headers=headers,
                                            reason=_reason(response.status)))
        if payload:
            data += self._conn.send(h11.Data(data=payload))
        data += self._conn.send(h11.EndOfMessage())
        self._send(data)
        self._access(response.status, len(payload))

    def _send(self, data: bytes) -> None:
        self.request.settimeout(self._timeout)  # a client that does not read cannot hold the thread
        self.request.sendall(data)

    def _error(self, status: int, message: str) -> None:
        """A request refused before it reached a route: a JSON error like any other, and the
        connection is closed since the rest of what the client sent cannot be trusted."""
        self._close = True
        self._reply(json_response(status, {"error": message}))

    def _protocol_error(self, e: h11.RemoteProtocolError) -> None:
        status, message = e.error_status_hint, str(e)
        if status == 431 and b"\n" not in self._conn.trailing_data[0]:
            status, message = 414, "request line too long"
        if self._conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            self._error(status, message)

    def _drain_before_close(self) -> None:
        """After an error answer: stop sending, then read and drop what the client still sends for
        a moment, so that closing with unread data does not reset the connection (a reset can
        destroy the answer before the client has read it)."""
        deadline = time.monotonic() + _LINGER
        try:
            self.request.shutdown(socket.SHUT_WR)
            while (remaining := deadline - time.monotonic()) > 0:
                self.request.settimeout(remaining)
                if not self.request.recv(_RECV_SIZE):
                    return
        except OSError:
            pass

    def _access(self, status: int, size: int) -> None:
        if not access_log.isEnabledFor(logging.INFO):
            return
        requestline = self._requestline or _printable(bytes(self._raw)) or "-"
        when = time.strftime("[%d/%b/%Y:%H:%M:%S %z]", time.localtime(self._started))
        access_log.info('%s %s "%s" %d %d "%s" "%s"', self.client_address[0], when, requestline,
                        status, size, self._header(b"referer"), self._header(b"user-agent"))


class Listener(socketserver.TCPServer):
    """One listening socket. Connections are accepted by HttpService's accept thread (which watches
    every socket and a wake-up pipe, so it sleeps until there is work) and served on daemon threads
    named pgwarden-api-N."""

    allow_reuse_address = True
    # Connections past max_connections wait here (the kernel caps it at net.core.somaxconn).
    request_queue_size = 1024

    def __init__(self, family: socket.AddressFamily, address: tuple[Any, ...], dispatch: Route,
                 tls: Callable[[], ssl.SSLContext] | None = None,
                 slots: ConnectionSlots | None = None) -> None:
        self.address_family = family
        self.dispatch = dispatch
        self.tls = tls
        self.request_timeout = _REQUEST_TIMEOUT
        self.idle_timeout = _IDLE_TIMEOUT
        self.slots = slots if slots is not None else ConnectionSlots()
        self._serial = itertools.count(1)
        self._conns: dict[socket.socket, Slot] = {}
        self._conns_lock = threading.Lock()
        super().__init__(address, Handler)
        self.socket.setblocking(False)

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # as asyncio does
        super().server_bind()
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
            self._conns[request] = self.slots.take(request)
        thread = threading.Thread(target=self._process, args=(request, client_address),
                                  name=f"pgwarden-api-{next(self._serial)}", daemon=True)
        try:
            thread.start()
        except RuntimeError:
            log.warning("REST API: cannot start a thread for %s; connection dropped", client_address[0])
            self._forget(request)

    def _process(self, request: socket.socket, client_address: Any) -> None:
        try:
            if self.tls is not None:
                request = self._handshake(request)
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self._forget(request)

    def slot_of(self, request: socket.socket) -> Slot:
        with self._conns_lock:
            return self._conns[request]

    def _handshake(self, raw: socket.socket) -> ssl.SSLSocket:
        """The TLS server side of an accepted socket, handshake done within the request deadline
        (an ssl.SSLError or timeout ends the connection; wrapping detaches `raw`, so the wrapped
        socket replaces it among the open connections, and in its slot). A handshake counts as
        waiting for a request: a full API sheds a client that dribbles one (limits.py)."""
        assert self.tls is not None
        with self._conns_lock:
            slot = self._conns.pop(raw)
            conn = self.tls().wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
            slot.sock = conn
            self._conns[conn] = slot
        slot.waiting()
        try:
            conn.settimeout(self.request_timeout)
            conn.do_handshake()
        except BaseException:
            self._forget(conn)
            raise
        return conn

    def _forget(self, request: socket.socket) -> None:
        with self._conns_lock:
            slot = self._conns.pop(request, None)
        self.shutdown_request(request)
        if slot is not None:
            self.slots.release(slot)

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
