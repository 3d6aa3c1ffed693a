"""The node's REST API: Patroni-compatible health checks, status, cluster view and operator
requests, served on threads of its own so HTTP never blocks the HA loop.

The API only reads the NodeState the agent publishes; operator requests go to the store (validated
by core/requests.py) or, for local operations, to the agent's Commands.

Transport: the standard library's ThreadingHTTPServer, not an async framework. That is a deliberate
choice, not an omission:
- footprint: the agent is meant to idle near Patroni's resident size, and importing aiohttp alone
  added ~11 MB of RSS; http.server is a few hundred KB of code that the interpreter mostly already has;
- the traffic is tiny: health checks (HAProxy, Kubernetes probes, load balancers) are GET/HEAD/OPTIONS
  with no body, a few a second per checker, plus the odd operator request; a thread per connection
  is plenty and lets blocking store calls run in the request's own thread with `store_timeout`;
- it is what Patroni serves its REST API with, so its clients' expectations hold.
What a framework would have given us is done here explicitly: one accept thread (no polling, it
sleeps until a connection or stop()), daemon request threads, a socket timeout so a silent client
cannot hold a thread, a 1 MiB body cap (413), Content-Length on every response (keep-alive stays in
sync), JSON errors for malformed requests, and an access log on "pgwarden.api.access".
"""

from __future__ import annotations

import difflib
import itertools
import json
import logging
import math
import re
import selectors
import socket
import socketserver
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pgwarden import __version__
from pgwarden.api.health import HEALTH_PATHS, BadRequest, health_status, member_lag, sync_flags
from pgwarden.api.state import CommandRefused, Commands, NodeState, StateHolder
from pgwarden.config.load import ConfigError, field_names, parse_settings, to_data
from pgwarden.config.schema import ClusterSettings
from pgwarden.core.model import ClusterView, FailoverRequest, MemberInfo, Role, int_to_lsn
from pgwarden.core.requests import RequestError, validate_failover, validate_switchover
from pgwarden.store.base import Store, StoreConflict, StoreError, StoreUnavailable

log = logging.getLogger(__name__)
access_log = logging.getLogger("pgwarden.api.access")

_NONE = type(None)
_STR_OR_NULL: tuple[type, ...] = (str, _NONE)
_MAX_BODY = 1024 * 1024
_MAX_LINE = 65536
_REQUEST_TIMEOUT = 10.0
_STOP_TIMEOUT = 10.0
_JSON_TYPE = "application/json; charset=utf-8"
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
_SLASH = re.compile(r"%2[Ff]")


class ApiServerError(RuntimeError):
    """The API could not start (typically: the port is taken)."""


class HttpError(Exception):
    """A client-facing failure: answered as `status` with {"error": message}."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# -- JSON documents (pure) ------------------------------------------------------------------------


def _iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, UTC).isoformat()


def _is_leader(m: MemberInfo, view: ClusterView | None) -> bool:
    return view is not None and view.leader is not None and view.leader.name == m.name


def status_json(st: NodeState, cluster_name: str | None) -> dict[str, Any]:
    """GET /status (and the body of every health check): this node as the agent last saw it.
    Carries Patroni's key names too (xlog, server_version, patroni, pause) for its tooling."""
    m = st.member
    view = st.cluster
    paused = view is not None and view.settings.paused
    is_sync, is_quorum = sync_flags(st)
    lag = None if (st.holds_lease or _is_leader(m, view)) else member_lag(m, view)
    if m.role == Role.PRIMARY:
        xlog: dict[str, Any] = {"location": m.lsn}
    else:
        xlog = {"received_location": m.received_lsn, "replayed_location": m.replayed_lsn}
    return {
        "name": m.name,
        "cluster": cluster_name,
        "role": m.role.value,
        "state": m.state,
        "running": m.running,
        "timeline": m.timeline,
        "lsn": m.lsn,
        "lsn_text": int_to_lsn(m.lsn),
        "received_lsn": m.received_lsn,
        "replayed_lsn": m.replayed_lsn,
        "lag": lag,
        "upstream": m.upstream,
        "replication_state": "streaming" if m.streaming else None,
        "holds_lease": st.holds_lease,
        "paused": paused,
        "pending_restart": m.pending_restart,
        "sync_standby": is_sync,
        "quorum_standby": is_quorum,
        "synchronous_standby_names": {"quorum": st.pg_sync.quorum, "members": sorted(st.pg_sync.members)},
        "tags": m.tags.to_dict(),
        "agent_pid": m.agent_pid,
        "postmaster_pid": m.postmaster_pid,
        "version": m.version,
        "pg_version": m.pg_version,
        "api_url": m.api_url,
        "store_ok": st.store_ok,
        "message": st.message,
        "started_at": _iso(st.started_at),
        "cluster_unlocked": view is None or view.leader is None,
        # Patroni's names for the same facts.
        "server_version": m.pg_version,
        "xlog": xlog,
        "pause": paused,
        "patroni": {"version": m.version, "scope": cluster_name, "name": m.name},
    }


def settings_json(s: ClusterSettings) -> dict[str, Any]:
    return to_data(s)


def failover_json(r: FailoverRequest | None) -> dict[str, Any] | None:
    if r is None:
        return None
    return {"kind": r.kind, "leader": r.leader, "candidate": r.candidate,
            "scheduled_at": _iso(r.scheduled_at)}


def cluster_json(view: ClusterView, cluster_name: str | None) -> dict[str, Any]:
    """GET /cluster: every member as the store has it; the leader shows primary or standby_leader."""
    leader = view.leader.name if view.leader else None
    members: list[dict[str, Any]] = []
    for name in sorted(view.members):
        m = view.members[name]
        role = m.role.value
        if name == leader:
            role = Role.STANDBY_LEADER.value if m.role == Role.STANDBY_LEADER else Role.PRIMARY.value
        members.append({
            "name": name,
            "role": role,
            "state": m.state,
            "running": m.running,
            "host": m.host,
            "port": m.port,
            "api_url": m.api_url,
            "timeline": m.timeline,
            "lsn": m.lsn,
            "lag": None if name == leader else member_lag(m, view),
            "pending_restart": m.pending_restart,
            "tags": m.tags.to_dict(),
        })
    sync = None
    if view.sync is not None:
        sync = {"leader": view.sync.leader, "members": sorted(view.sync.members), "quorum": view.sync.quorum}
    return {
        "scope": cluster_name,
        "members": members,
        "leader": leader,
        "sync": sync,
        "paused": view.settings.paused,
        "settings": settings_json(view.settings),
        "failover": failover_json(view.failover),
    }


def history_json(view: ClusterView) -> list[dict[str, Any]]:
    return [
        {"timeline": e.timeline, "switch_lsn": e.switch_lsn, "switch_lsn_text": int_to_lsn(e.switch_lsn),
         "reason": e.reason, "at": _iso(e.at), "new_leader": e.new_leader}
        for e in view.history
    ]


# -- request bodies -------------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a valid JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text} is out of range")
    return value


def parse_body(raw: bytes, required: bool = True) -> dict[str, Any]:
    """The request body as a JSON object; HttpError(400) for anything else. An empty body is {}
    when not `required`."""
    if not raw.strip():
        if required:
            raise HttpError(400, "request body must be a JSON object")
        return {}
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise HttpError(400, "request body is not valid UTF-8") from None
    try:
        data = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except (ValueError, RecursionError) as e:
        raise HttpError(400, f"malformed JSON: {e}") from None
    if not isinstance(data, dict):
        raise HttpError(400, f"request body must be a JSON object, not {type(data).__name__}")
    return data


def _type_name(types: tuple[type, ...]) -> str:
    names = {str: "a string", bool: "true or false", int: "an integer", float: "a number",
             _NONE: "null"}
    return " or ".join(names.get(t, t.__name__) for t in types)


def check_fields(body: Mapping[str, Any], spec: Mapping[str, tuple[type, ...]], what: str) -> None:
    """Unknown keys and wrong types are 400s naming the key."""
    for key, value in body.items():
        types = spec.get(key)
        if types is None:
            raise HttpError(400, f"{what}: unknown field '{key}' (fields: {', '.join(sorted(spec))})")
        # bool is an int in Python; JSON true must not pass as a number.
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if not ok:
            raise HttpError(400, f"{what}: field '{key}' must be {_type_name(types)}")


def parse_schedule(value: Any, action: str) -> float | None:
    """ISO-8601 with a timezone (Patroni insists on one), or epoch seconds; None = now."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, str):
        raise HttpError(400, f"scheduled_at must be an ISO-8601 time, got {type(value).__name__}")
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise HttpError(
            400, f"cannot parse scheduled_at '{value}': use ISO-8601, e.g. 2030-01-01T10:00:00+00:00"
        ) from None
    if when.tzinfo is None:
        raise HttpError(400, f"scheduled_at needs timezone information for a scheduled {action}")
    return when.timestamp()


def merge_settings(current: ClusterSettings, patch: Mapping[str, Any]) -> ClusterSettings:
    """PATCH semantics: flat ClusterSettings keys replace, null restores the default;
    `parameters` (or Patroni's `postgresql.parameters`) merge key by key, null removes one."""
    data: dict[str, Any] = settings_json(current)
    fields = field_names(ClusterSettings)

    def merge_params(value: Any, where: str) -> None:
        if value is None:
            data["parameters"] = {}
            return
        if not isinstance(value, dict):
            raise HttpError(400, f"{where} must be an object of parameter names to values")
        params = dict(data.get("parameters") or {})
        for name, v in value.items():
            if v is None:
                params.pop(name, None)
            else:
                params[name] = v
        data["parameters"] = params

    for key, value in patch.items():
        if key == "parameters":
            merge_params(value, "parameters")
        elif key == "postgresql" and isinstance(value, dict):
            for sub, v in value.items():
                if sub == "parameters":
                    merge_params(v, "postgresql.parameters")
                elif sub == "use_pg_rewind":
                    data[sub] = v
                else:
                    raise HttpError(
                        400, f"unknown setting 'postgresql.{sub}' (use parameters or use_pg_rewind)"
                    )
        elif key not in fields:
            guess = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.5)
            hint = f"; did you mean '{guess[0]}'?" if guess else ""
            raise HttpError(400, f"unknown setting '{key}'{hint} (settings: {', '.join(sorted(fields))})")
        elif value is None:
            data.pop(key, None)
        else:
            data[key] = value
    try:
        return parse_settings(data, "settings")
    except ConfigError as e:
        raise HttpError(400, str(e)) from None


# -- the transport --------------------------------------------------------------------------------


class _Disconnect(Exception):
    """The client went away or stopped sending mid-request: there is nobody to answer."""


@dataclass(frozen=True)
class Request:
    """What a route handler sees: the method, the percent-decoded path, the query (first value of
    each key) and the body, read on demand (HttpError 413 past the cap, 400 if malformed)."""

    method: str
    path: str
    query: Mapping[str, str]
    read: Callable[[], bytes]


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)


Route = Callable[[Request], Response]


def _json(status: int, body: Any, headers: Mapping[str, str] | None = None) -> Response:
    data = json.dumps(body, sort_keys=True).encode("utf-8")
    return Response(status, data, {"Content-Type": _JSON_TYPE, **(headers or {})})


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


class _Handler(BaseHTTPRequestHandler):
    """One connection: reads requests (keep-alive), hands each to ApiServer.dispatch, writes the
    answer in one piece with Content-Length always set."""

    protocol_version = "HTTP/1.1"
    server_version = f"pgwarden/{__version__}"
    sys_version = ""
    timeout = _REQUEST_TIMEOUT  # on the socket: a silent client is dropped, not waited for
    disable_nagle_algorithm = True

    _started = 0.0
    _length: int | None = 0  # request body: bytes announced; None = chunked
    _body: bytes | None = None

    @property
    def _api(self) -> ApiServer:
        server = self.server
        assert isinstance(server, _Server)
        return server.api

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
        except (OSError, _Disconnect) as e:  # timeouts, resets, broken pipes
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
        response = self._api.dispatch(request)
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
            raise _Disconnect(repr(e)) from e
        if len(data) < n:
            raise _Disconnect("the client closed the connection mid-body")
        return data

    def _line(self) -> bytes:
        try:
            line = self.rfile.readline(_MAX_LINE + 1)
        except OSError as e:
            raise _Disconnect(repr(e)) from e
        if not line:
            raise _Disconnect("the client closed the connection mid-body")
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
        self._reply(_json(code, {"error": message or self.responses.get(code, ("error",))[0]}),
                    head=self.command == "HEAD")

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # _access logs every answer, in the format the agent has always used

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("REST API: %s: %s", self.address_string(), format % args)


class _Server(ThreadingHTTPServer):
    """One listening socket. Connections are accepted by ApiServer's accept thread (which watches
    every socket and a wake-up pipe, so it sleeps until there is work) and served on daemon threads
    named pgwarden-api-N."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, family: socket.AddressFamily, address: tuple[Any, ...], api: ApiServer) -> None:
        self.address_family = family
        self.api = api
        self._serial = itertools.count(1)
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(address, _Handler)
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


# -- the server -----------------------------------------------------------------------------------


# The reading a peer waits for before its promotion decision (its own deadline is shorter).
POSITION_TIMEOUT = 1.0


class ApiServer:
    """One node's HTTP API, on threads of its own. `start()` returns once listening."""

    def __init__(
        self,
        host: str,
        port: int,
        holder: StateHolder,
        store: Store | None,
        commands: Commands | None,
        node_name: str,
        *,
        store_timeout: float = 3.0,
    ) -> None:
        self.host = host
        self.port = port
        self._holder = holder
        self._store = store
        self._commands = commands
        self._node_name = node_name
        self._store_timeout = store_timeout
        self._thread: threading.Thread | None = None
        self._servers: list[_Server] = []
        self._wake: tuple[socket.socket, socket.socket] | None = None
        self._bound_port: int | None = None
        self._routes: dict[str, dict[str, Route]] = {}
        self._add_routes()

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self._bound_port or self.port}"

    def start(self) -> None:
        if self._thread is not None:
            raise ApiServerError("REST API already started")
        try:
            servers = self._listen()
        except OSError as e:
            reason = e.strerror or str(e)
            raise ApiServerError(f"REST API cannot listen on {self.host}:{self.port}: {reason}") from e
        self._servers = servers
        self._bound_port = servers[0].server_port
        self._wake = socket.socketpair()
        self._thread = threading.Thread(target=self._accept_loop, args=(servers, self._wake[0]),
                                        name="pgwarden-api", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        thread, wake, servers = self._thread, self._wake, self._servers
        if thread is None or wake is None:
            return
        self._thread, self._wake, self._servers = None, None, []
        try:
            wake[1].send(b"x")
        except OSError:
            pass
        thread.join(_STOP_TIMEOUT)
        for server in servers:
            server.server_close()
            server.end_connections()
        for s in wake:
            s.close()

    def _listen(self) -> list[_Server]:
        """A socket per address the host resolves to (an empty host: all of them, IPv4 and IPv6)."""
        infos = socket.getaddrinfo(self.host or None, self.port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
        servers: list[_Server] = []
        seen: set[tuple[Any, ...]] = set()
        try:
            for family, _, _, _, sockaddr in infos:
                key = (family, *sockaddr[:2])
                if key not in seen:
                    seen.add(key)
                    servers.append(_Server(family, tuple(sockaddr), self))
        except BaseException:
            for server in servers:
                server.server_close()
            raise
        return servers

    @staticmethod
    def _accept_loop(servers: list[_Server], wake: socket.socket) -> None:
        with selectors.DefaultSelector() as sel:
            for server in servers:
                sel.register(server.socket, selectors.EVENT_READ, server)
            sel.register(wake, selectors.EVENT_READ, None)
            while True:
                for key, _ in sel.select():
                    if key.data is None:
                        return
                    try:
                        key.data.accept()
                    except Exception:
                        log.exception("REST API: cannot accept a connection")

    def _add_routes(self) -> None:
        r = self._routes
        for path in sorted(HEALTH_PATHS):
            for p in [path] if path == "/" else [path, path + "/"]:
                r[p] = {"GET": self._health, "HEAD": self._health, "OPTIONS": self._health}
        for p in ("/status", "/patroni"):
            r[p] = {"GET": self._status, "HEAD": self._status}
        r["/position"] = {"GET": self._position}
        r["/cluster"] = {"GET": self._cluster, "HEAD": self._cluster}
        r["/history"] = {"GET": self._history, "HEAD": self._history}
        r["/config"] = {"GET": self._get_config, "HEAD": self._get_config, "PATCH": self._patch_config,
                        "PUT": self._put_config}
        r["/switchover"] = {"POST": self._switchover, "DELETE": self._delete_switchover}
        r["/failover"] = {"POST": self._failover}
        r["/restart"] = {"POST": self._restart}
        r["/reinitialize"] = {"POST": self._reinitialize}

    def dispatch(self, request: Request) -> Response:
        """Route one request. Every failure becomes a JSON {"error": ...}; nothing a client sends
        yields a traceback."""
        try:
            methods = self._routes.get(request.path)
            if methods is None:
                raise HttpError(404, f"no such endpoint: {request.path}")
            route = methods.get(request.method)
            if route is None:
                allowed = ",".join(sorted(methods))
                return _json(405, {"error": f"method {request.method} is not allowed on {request.path} "
                                            f"(allowed: {allowed})"}, {"Allow": allowed})
            return route(request)
        except HttpError as e:
            return _json(e.status, {"error": e.message})
        except BadRequest as e:
            return _json(400, {"error": str(e)})
        except RequestError as e:
            return _json(400 if e.kind == "invalid" else 412, {"error": e.message})
        except StoreConflict as e:
            return _json(409, {"error": f"the store changed concurrently, retry: {e}"})
        except StoreUnavailable as e:
            return _json(503, {"error": f"the store is unreachable: {e}"})
        except StoreError as e:
            return _json(503, {"error": f"store error: {e}"})
        except _Disconnect:
            raise
        except Exception as e:
            log.exception("REST API: unexpected error on %s %s", request.method, request.path)
            return _json(500, {"error": f"internal error: {type(e).__name__}"})

    # -- helpers --------------------------------------------------------------------------------

    def _state(self) -> NodeState:
        st = self._holder.get()
        if st is None:
            raise HttpError(503, "the agent is starting: no state published yet")
        return st

    def _cluster_name(self) -> str | None:
        return self._store.cluster if self._store is not None else None

    def _need_store(self) -> Store:
        if self._store is None:
            raise HttpError(503, "this node has no store connection")
        return self._store

    def _snapshot(self) -> ClusterView:
        return self._need_store().snapshot(self._store_timeout)

    def _view(self) -> ClusterView:
        """A fresh snapshot when there is a store, else the agent's last one."""
        if self._store is not None:
            return self._snapshot()
        st = self._state()
        if st.cluster is None:
            raise HttpError(503, "no store snapshot yet")
        return st.cluster

    # -- read endpoints -------------------------------------------------------------------------

    def _health(self, request: Request) -> Response:
        path = request.path if request.path == "/" else request.path.rstrip("/")
        st = self._holder.get()
        code = 503 if st is None else health_status(path, request.query, st, time.monotonic())
        if request.method in ("HEAD", "OPTIONS"):
            # HAProxy's `option httpchk` reads the status line only.
            return Response(code)
        body = status_json(st, self._cluster_name()) if st is not None else {
            "error": "the agent is starting: no state published yet"}
        return _json(code, body)

    def _status(self, request: Request) -> Response:
        return _json(200, status_json(self._state(), self._cluster_name()))

    def _position(self, request: Request) -> Response:
        """This node's WAL position read from PostgreSQL now (see agent/position.py)."""
        p = self._need_commands().read_position(POSITION_TIMEOUT)
        return _json(200, {"name": p.name, "running": p.running, "role": p.role.value,
                           "timeline": p.timeline, "lsn": p.lsn, "received_lsn": p.received_lsn,
                           "replayed_lsn": p.replayed_lsn})

    def _cluster(self, request: Request) -> Response:
        st = self._state()
        if st.cluster is None:
            raise HttpError(503, "no store snapshot yet")
        return _json(200, cluster_json(st.cluster, self._cluster_name()))

    def _history(self, request: Request) -> Response:
        return _json(200, history_json(self._view()))

    def _get_config(self, request: Request) -> Response:
        return _json(200, settings_json(self._view().settings))

    # -- settings -------------------------------------------------------------------------------

    def _write_settings(self, view: ClusterView, new: ClusterSettings) -> Response:
        store = self._need_store()
        if not store.set_settings(new, view.settings_token or None, self._store_timeout):
            raise HttpError(409, "the settings changed while this request ran; read them again and retry")
        log.info("REST API: cluster settings changed: %s", settings_json(new))
        return _json(200, settings_json(new))

    def _patch_config(self, request: Request) -> Response:
        body = parse_body(request.read())
        view = self._snapshot()
        return self._write_settings(view, merge_settings(view.settings, body))

    def _put_config(self, request: Request) -> Response:
        body = parse_body(request.read())
        try:
            new = parse_settings(body, "settings")
        except ConfigError as e:
            raise HttpError(400, str(e)) from None
        view = self._snapshot()
        return self._write_settings(view, new)

    # -- switchover / failover ------------------------------------------------------------------

    def _submit(self, view: ClusterView, req: FailoverRequest) -> Response:
        store = self._need_store()
        token = view.failover.token if view.failover is not None else None
        if not store.set_failover(req, token, self._store_timeout):
            raise HttpError(409, "another switchover or failover request was written meanwhile; retry")
        if req.kind == "switchover":
            target = f" to {req.candidate}" if req.candidate else ""
            when = f"scheduled at {_iso(req.scheduled_at)}" if req.scheduled_at is not None else "requested"
            msg = f"switchover from {req.leader}{target} {when}"
        else:
            msg = f"failover to {req.candidate} requested"
        log.info("REST API: %s", msg)
        return _json(202, {"message": msg})

    def _switchover(self, request: Request) -> Response:
        body = parse_body(request.read())
        check_fields(body, {"leader": _STR_OR_NULL, "candidate": _STR_OR_NULL, "member": _STR_OR_NULL,
                            "scheduled_at": (str, int, float, _NONE)}, "switchover")
        return self._do_switchover(body)

    def _do_switchover(self, body: Mapping[str, Any]) -> Response:
        scheduled = parse_schedule(body.get("scheduled_at"), "switchover")
        candidate = body.get("candidate") or body.get("member") or None
        view = self._snapshot()
        req = validate_switchover(view, body.get("leader") or None, candidate, scheduled, time.time())
        return self._submit(view, req)

    def _failover(self, request: Request) -> Response:
        body = parse_body(request.read())
        check_fields(body, {"leader": _STR_OR_NULL, "candidate": _STR_OR_NULL, "member": _STR_OR_NULL,
                            "scheduled_at": (str, int, float, _NONE)}, "failover")
        if body.get("leader"):
            # Patroni: a failover naming the leader is carried out as a switchover.
            return self._do_switchover(body)
        if body.get("scheduled_at") not in (None, ""):
            raise HttpError(400, "a failover can't be scheduled; use a switchover")
        candidate = body.get("candidate") or body.get("member")
        if not candidate:
            raise HttpError(400, "a failover needs a candidate")
        view = self._snapshot()
        return self._submit(view, validate_failover(view, candidate, time.time()))

    def _delete_switchover(self, request: Request) -> Response:
        store = self._need_store()
        view = self._snapshot()
        if view.failover is None or view.failover.scheduled_at is None:
            raise HttpError(404, "no switchover is scheduled")
        store.clear_failover(self._store_timeout)
        return _json(200, {"message": "scheduled switchover deleted"})

    # -- local commands -------------------------------------------------------------------------

    def _need_commands(self) -> Commands:
        if self._commands is None:
            raise HttpError(503, "this node does not accept local commands")
        return self._commands

    def _restart(self, request: Request) -> Response:
        body = parse_body(request.read(), required=False)
        if "schedule" in body:
            raise HttpError(400, "scheduled restarts are not supported; restart now or later by hand")
        check_fields(body, {"role": (str,), "restart_pending": (bool,)}, "restart")
        commands = self._need_commands()
        st = self._state()
        role = body.get("role")
        if role is not None:
            want = Role.PRIMARY.value if role == "master" else role
            if want not in (Role.PRIMARY.value, Role.REPLICA.value, Role.STANDBY_LEADER.value):
                raise HttpError(400, "role must be primary, standby_leader or replica")
            if st.member.role.value != want:
                raise HttpError(412, f"not restarted: this node is {st.member.role.value}, not {want}")
        if body.get("restart_pending") and not st.member.pending_restart:
            raise HttpError(412, "not restarted: no restart is pending on this node")
        try:
            msg = commands.request_restart()
        except CommandRefused as e:
            raise HttpError(409, str(e)) from None
        return _json(200, {"message": msg})

    def _reinitialize(self, request: Request) -> Response:
        body = parse_body(request.read(), required=False)
        check_fields(body, {"force": (bool,)}, "reinitialize")
        commands = self._need_commands()
        try:
            msg = commands.request_reinitialize(bool(body.get("force", False)))
        except CommandRefused as e:
            raise HttpError(409, str(e)) from None
        return _json(200, {"message": msg})
