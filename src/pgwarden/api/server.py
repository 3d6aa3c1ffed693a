"""The node's REST API: Patroni-compatible health checks, status, cluster view and operator
requests, served on threads of its own so HTTP never blocks the HA loop.

The API only reads the NodeState the agent publishes; operator requests go to the store (validated
by core/requests.py) or, for local operations, to the agent's Commands. With credentials
configured, every request but the health checks and the few reads peers and load balancers need
is refused with a 401 (auth.py says which). This module is the ApiServer: its lifecycle, routes
and handlers; the HTTP/1.1 transport is in transport.py (h11 for the framing under our own sockets
and threads; see there for why), JSON documents in views.py, request bodies in bodies.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pgwarden.api.auth import BasicAuth
from pgwarden.api.bodies import (
    NULL,
    STR_OR_NULL,
    check_fields,
    keep_source_passwords,
    merge_settings,
    parse_body,
    parse_schedule,
)
from pgwarden.api.health import HEALTH_PATHS, BadRequest, health_status
from pgwarden.api.limits import DEFAULT_MAX_CONNECTIONS
from pgwarden.api.messages import Disconnect, HttpError, Request, Response, Route, json_response
from pgwarden.api.observe_routes import add_observability_routes
from pgwarden.api.service import HttpService, ServiceError
from pgwarden.api.state import CommandRefused, Commands, NodeState, StateHolder
from pgwarden.api.telemetry import Telemetry
from pgwarden.api.views import cluster_json, history_json, iso_time, settings_json, site_json, status_json
from pgwarden.config.errors import ConfigError
from pgwarden.config.load import parse_settings
from pgwarden.config.schema import ClusterSettings
from pgwarden.core.model import ClusterView, FailoverRequest
from pgwarden.core.parameters import SettingSpec, changed_parameters, parameter_errors
from pgwarden.core.requests import (
    RequestError,
    failover_is_switchover,
    validate_failover,
    validate_restart,
    validate_switchover,
)
from pgwarden.store.base import StoreError, StoreUnavailable
from pgwarden.store.cluster import ClusterStore
from pgwarden.tls.contexts import ContextSource

log = logging.getLogger(__name__)



class ApiServerError(RuntimeError):
    """The API could not start (typically: the port is taken)."""


# The reading a peer waits for before its promotion decision (its own deadline is shorter).
POSITION_TIMEOUT = 1.0


class ApiServer:
    """One node's HTTP API, on threads of its own. `start()` returns once listening."""

    def __init__(
        self,
        host: str,
        port: int,
        holder: StateHolder,
        store: ClusterStore | None,
        commands: Commands | None,
        node_name: str,
        *,
        store_timeout: float = 3.0,
        auth: BasicAuth | None = None,
        tls: ContextSource | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        setting_specs: Callable[[float], Sequence[SettingSpec]] | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self._holder = holder
        self._store = store
        self._commands = commands
        self._node_name = node_name
        self._store_timeout = store_timeout
        self._auth = auth  # None: no credentials required (loopback, or restapi.insecure)
        # Our PostgreSQL's pg_settings, to check parameter values before they are stored.
        self._setting_specs = setting_specs
        self.tls = tls  # None: plain HTTP; else HTTPS with the source's current context
        self._service = HttpService(host, port, self.dispatch, max_connections=max_connections,
                                    tls=None if tls is None else tls.get)
        self._telemetry = telemetry  # the agent's records for /metrics and /decisions
        self._routes: dict[str, dict[str, Route]] = {}
        self._add_routes()

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return self._service.url

    @property
    def connections(self) -> int:
        """Connections open now (each has a thread)."""
        return self._service.connections

    def start(self) -> None:
        try:
            self._service.start()
        except ServiceError as e:
            raise ApiServerError(f"REST API {e}") from e

    def stop(self) -> None:
        self._service.stop()

    def _add_routes(self) -> None:
        r = self._routes
        for path in sorted(HEALTH_PATHS):
            for p in [path] if path == "/" else [path, path + "/"]:
                r[p] = {"GET": self._health, "HEAD": self._health, "OPTIONS": self._health}
        for p in ("/status", "/patroni"):
            r[p] = {"GET": self._status, "HEAD": self._status}
        r["/position"] = {"GET": self._position}
        r["/leader-check"] = {"GET": self._leader_check}
        r["/site"] = {"GET": self._site}
        r["/cluster"] = {"GET": self._cluster, "HEAD": self._cluster}
        r["/history"] = {"GET": self._history, "HEAD": self._history}
        r["/config"] = {"GET": self._get_config, "HEAD": self._get_config, "PATCH": self._patch_config,
                        "PUT": self._put_config}
        r["/switchover"] = {"POST": self._switchover, "DELETE": self._delete_switchover}
        r["/failover"] = {"POST": self._failover}
        r["/restart"] = {"POST": self._restart}
        r["/reinitialize"] = {"POST": self._reinitialize}
        r["/failsafe"] = {"POST": self._failsafe_confirm}
        r["/failsafe/vote"] = {"POST": self._failsafe_vote}
        r["/failsafe/release"] = {"POST": self._failsafe_release}
        add_observability_routes(r, self._holder, self._telemetry, self._node_name, self._cluster_name)

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
                error = f"method {request.method} is not allowed on {request.path} (allowed: {allowed})"
                return json_response(405, {"error": error}, {"Allow": allowed})
            if self._auth is not None and (refused := self._auth.refusal(request)) is not None:
                return refused
            return route(request)
        except HttpError as e:
            return json_response(e.status, {"error": e.message})
        except BadRequest as e:
            return json_response(400, {"error": str(e)})
        except RequestError as e:
            return json_response(400 if e.kind == "invalid" else 412, {"error": e.message})
        except StoreUnavailable as e:
            return json_response(503, {"error": f"the store is unreachable: {e}"})
        except StoreError as e:
            return json_response(503, {"error": f"store error: {e}"})
        except Disconnect:
            raise
        except Exception as e:
            log.exception("REST API: unexpected error on %s %s", request.method, request.path)
            return json_response(500, {"error": f"internal error: {type(e).__name__}"})

    # -- helpers --------------------------------------------------------------------------------

    def _state(self) -> NodeState:
        st = self._holder.get()
        if st is None:
            raise HttpError(503, "the agent is starting: no state published yet")
        return st

    def _cluster_name(self) -> str | None:
        return self._store.cluster if self._store is not None else None

    def _need_store(self) -> ClusterStore:
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
        return json_response(code, body)

    def _status(self, request: Request) -> Response:
        return json_response(200, status_json(self._state(), self._cluster_name()))

    def _site(self, request: Request) -> Response:
        return json_response(200, site_json(self._state(), self._cluster_name()))

    def _position(self, request: Request) -> Response:
        """This node's WAL position read from PostgreSQL now (see agent/position.py)."""
        p = self._need_commands().read_position(POSITION_TIMEOUT)
        return json_response(200, {"name": p.name, "running": p.running, "role": p.role.value,
                           "timeline": p.timeline, "lsn": p.lsn, "received_lsn": p.received_lsn,
                           "replayed_lsn": p.replayed_lsn})

    def _leader_check(self, request: Request) -> Response:
        """Rule 16: our own check, now, of the leader named (agent/crash_check.py)."""
        leader = request.query.get("leader", "")
        if not leader:
            raise HttpError(400, "name the leader to check: GET /leader-check?leader=NAME")
        c = self._need_commands().check_leader(leader, POSITION_TIMEOUT)
        return json_response(200, {"name": c.name, "leader": leader, "refused": c.refused,
                                   "attached": c.attached})

    def _cluster(self, request: Request) -> Response:
        st = self._state()
        if st.cluster is None:
            raise HttpError(503, "no store snapshot yet")
        doc = cluster_json(st.cluster, self._cluster_name())
        # During a store outage this is the last snapshot: say so, and how old it is.
        doc["store_reachable"] = st.store_ok
        if st.cluster_at is not None:
            doc["snapshot_age"] = round(max(0.0, time.monotonic() - st.cluster_at), 1)
        return json_response(200, doc)

    def _history(self, request: Request) -> Response:
        return json_response(200, history_json(self._view()))

    def _get_config(self, request: Request) -> Response:
        return json_response(200, settings_json(self._view().settings))

    # -- settings -------------------------------------------------------------------------------

    def _check_parameters(self, view: ClusterView, new: ClusterSettings) -> None:
        """Refuse (400) parameter values our PostgreSQL would refuse, before every node restarts
        with them (see core/parameters.py); only values added or changed are checked."""
        changed = changed_parameters(view.settings.parameters, new.parameters)
        if not changed:
            return
        if self._setting_specs is None:
            raise HttpError(503, "this node has no PostgreSQL to check parameter values against; "
                                 "send the request to a member's agent")
        try:
            specs = self._setting_specs(self._store_timeout)
        except Exception as e:
            log.info("REST API: cannot read pg_settings to check parameters: %s", e)
            raise HttpError(503, "cannot check parameter values: this node's PostgreSQL does not "
                                 "answer; send the request to a member whose PostgreSQL runs") from None
        if errors := parameter_errors(specs, changed):
            raise HttpError(400, "; ".join(errors))

    def _write_settings(self, view: ClusterView, new: ClusterSettings) -> Response:
        new = keep_source_passwords(view.settings, new)
        self._check_parameters(view, new)
        store = self._need_store()
        if not store.set_settings(new, view.settings_token or None, self._store_timeout):
            raise HttpError(409, "the settings changed while this request ran; read them again and retry")
        log.info("REST API: cluster settings changed: %s", settings_json(new))
        return json_response(200, settings_json(new))

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
            scheduled = req.scheduled_at
            when = f"scheduled at {iso_time(scheduled)}" if scheduled is not None else "requested"
            msg = f"switchover from {req.leader}{target} {when}"
        else:
            msg = f"failover to {req.candidate} requested"
        log.info("REST API: %s", msg)
        return json_response(202, {"message": msg})

    def _switchover(self, request: Request) -> Response:
        body = parse_body(request.read())
        check_fields(body, {"leader": STR_OR_NULL, "candidate": STR_OR_NULL, "member": STR_OR_NULL,
                            "scheduled_at": (str, int, float, NULL)}, "switchover")
        return self._do_switchover(body)

    def _do_switchover(self, body: Mapping[str, Any]) -> Response:
        scheduled = parse_schedule(body.get("scheduled_at"), "switchover")
        candidate = body.get("candidate") or body.get("member") or None
        view = self._snapshot()
        req = validate_switchover(view, body.get("leader") or None, candidate, scheduled, time.time())
        return self._submit(view, req)

    def _failover(self, request: Request) -> Response:
        body = parse_body(request.read())
        check_fields(body, {"leader": STR_OR_NULL, "candidate": STR_OR_NULL, "member": STR_OR_NULL,
                            "scheduled_at": (str, int, float, NULL)}, "failover")
        candidate: str = body.get("candidate") or body.get("member") or ""
        if failover_is_switchover(body.get("leader"), candidate,
                                  body.get("scheduled_at") not in (None, "")):
            return self._do_switchover(body)
        view = self._snapshot()
        return self._submit(view, validate_failover(view, candidate, time.time()))

    def _delete_switchover(self, request: Request) -> Response:
        store = self._need_store()
        view = self._snapshot()
        if view.failover is None or view.failover.scheduled_at is None:
            raise HttpError(404, "no switchover is scheduled")
        store.clear_failover(self._store_timeout)
        return json_response(200, {"message": "scheduled switchover deleted"})

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
        validate_restart(self._state().member, body.get("role"), bool(body.get("restart_pending")))
        try:
            msg = commands.request_restart()
        except CommandRefused as e:
            raise HttpError(409, str(e)) from None
        return json_response(200, {"message": msg})

    # -- the majority failsafe (rule 17): members' promises, asked by a leader or a candidate ----

    def _failsafe_confirm(self, request: Request) -> Response:
        body = parse_body(request.read())
        check_fields(body, {"leader": (str,), "timeline": (int, NULL), "ttl": (int, float)}, "failsafe")
        leader, ttl = _required_str(body, "leader"), _positive(body, "ttl")
        ok, why = self._need_commands().failsafe_confirm(leader, body.get("timeline"), ttl)
        return json_response(200, {"confirmed": ok, "reason": why})

    def _failsafe_vote(self, request: Request) -> Response:
        body = parse_body(request.read())
        check_fields(body, {"candidate": (str,), "ttl": (int, float), "round": (str,)}, "failsafe vote")
        candidate, ttl = _required_str(body, "candidate"), _positive(body, "ttl")
        round_id = _round_id(body, required=False)
        ok, why = self._need_commands().failsafe_vote(candidate, ttl, round_id)
        return json_response(200, {"granted": ok, "reason": why})

    def _failsafe_release(self, request: Request) -> Response:
        body = parse_body(request.read())
        check_fields(body, {"candidate": (str,), "round": (str,)}, "failsafe release")
        candidate, round_id = _required_str(body, "candidate"), _round_id(body, required=True)
        ok, why = self._need_commands().failsafe_release(candidate, round_id)
        return json_response(200, {"released": ok, "reason": why})

    def _reinitialize(self, request: Request) -> Response:
        body = parse_body(request.read(), required=False)
        check_fields(body, {"force": (bool,)}, "reinitialize")
        commands = self._need_commands()
        try:
            msg = commands.request_reinitialize(bool(body.get("force", False)))
        except CommandRefused as e:
            raise HttpError(409, str(e)) from None
        return json_response(200, {"message": msg})



def _required_str(body: Mapping[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise HttpError(400, f"{key} is required (a member name)")
    return value


def _round_id(body: Mapping[str, Any], required: bool) -> str:
    """A candidate's name for one round of vote requests: 1-64 printable ASCII characters."""
    value = body.get("round")
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not 0 < len(value) <= 64 or not value.isascii() or \
            not value.isprintable():
        raise HttpError(400, "round is required: the candidate's round id, 1-64 printable ASCII characters")
    return value


def _positive(body: Mapping[str, Any], key: str) -> float:
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 3600:
        raise HttpError(400, f"{key} is required: seconds, more than 0 and at most 3600")
    return float(value)
