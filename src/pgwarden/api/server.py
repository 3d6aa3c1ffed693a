"""The node's REST API: Patroni-compatible health checks, status, cluster view and operator
requests, served by aiohttp on its own thread and event loop so HTTP never blocks the HA loop.

The API only reads the NodeState the agent publishes; operator requests go to the store (validated
by core/requests.py) or, for local operations, to the agent's Commands.
"""

from __future__ import annotations

import asyncio
import difflib
import functools
import json
import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, TypeVar

from aiohttp import web

from pgwarden.api.health import HEALTH_PATHS, BadRequest, health_status, member_lag, sync_flags
from pgwarden.api.state import CommandRefused, Commands, NodeState, StateHolder
from pgwarden.config.load import ConfigError, parse_settings
from pgwarden.config.schema import ClusterSettings
from pgwarden.core.model import ClusterView, FailoverRequest, MemberInfo, Role, int_to_lsn
from pgwarden.core.requests import RequestError, validate_failover, validate_switchover
from pgwarden.store.base import Store, StoreConflict, StoreError, StoreUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_NONE = type(None)
_STR_OR_NULL: tuple[type, ...] = (str, _NONE)
_STARTUP_TIMEOUT = 10.0


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
    data: dict[str, Any] = s.model_dump(mode="json")
    return data


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
    fields = ClusterSettings.model_fields

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


# -- the server -----------------------------------------------------------------------------------


def _json(status: int, body: Any, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response(body, status=status, headers=headers,
                             dumps=functools.partial(json.dumps, sort_keys=True))


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes a JSON {"error": ...}; nothing a client sends yields a traceback."""
    try:
        return await handler(request)
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
    except web.HTTPException as e:
        if e.status < 400:
            raise
        headers = {"Allow": e.headers["Allow"]} if "Allow" in e.headers else None
        if e.status == 404:
            msg = f"no such endpoint: {request.path}"
        elif e.status == 405:
            allowed = e.headers.get("Allow", "")
            msg = f"method {request.method} is not allowed on {request.path} (allowed: {allowed})"
        else:
            msg = e.reason
        return _json(e.status, {"error": msg}, headers)
    except asyncio.CancelledError:
        raise
    except Exception as e:
        log.exception("REST API: unexpected error on %s %s", request.method, request.path)
        return _json(500, {"error": f"internal error: {type(e).__name__}"})


class ApiServer:
    """One node's HTTP API, on its own thread. `start()` returns once listening."""

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
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._bound_port: int | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self._bound_port or self.port}"

    def start(self) -> None:
        if self._thread is not None:
            raise ApiServerError("REST API already started")
        self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="pgwarden-api-io")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="pgwarden-api", daemon=True)
        self._thread.start()
        if not self._started.wait(_STARTUP_TIMEOUT):
            raise ApiServerError(f"REST API did not start listening on {self.host}:{self.port} in time")
        if self._start_error is not None:
            self._thread.join()
            self._thread = None
            self._executor.shutdown(wait=False)
            err = self._start_error
            reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
            raise ApiServerError(f"REST API cannot listen on {self.host}:{self.port}: {reason}") from err

    def stop(self) -> None:
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        self._thread = None
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def _run(self) -> None:
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._listen())
        except BaseException as e:
            self._start_error = e
            self._started.set()
            loop.close()
            return
        self._started.set()
        try:
            loop.run_forever()
        finally:
            if self._runner is not None:
                loop.run_until_complete(self._runner.cleanup())
            loop.close()

    async def _listen(self) -> None:
        app = web.Application(middlewares=[_errors], client_max_size=1024 * 1024)
        self._routes(app)
        runner = web.AppRunner(app, shutdown_timeout=1.0, keepalive_timeout=75.0,
                               access_log=logging.getLogger("pgwarden.api.access"))
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self._bound_port = int(sockets[0].getsockname()[1])

    def _routes(self, app: web.Application) -> None:
        r = app.router
        for path in sorted(HEALTH_PATHS):
            paths = [path] if path == "/" else [path, path + "/"]
            for p in paths:
                r.add_get(p, self._health)  # also HEAD
                r.add_route("OPTIONS", p, self._health)
        for p in ("/status", "/patroni"):
            r.add_get(p, self._status)
        r.add_get("/cluster", self._cluster)
        r.add_get("/history", self._history)
        r.add_get("/config", self._get_config)
        r.add_patch("/config", self._patch_config)
        r.add_put("/config", self._put_config)
        r.add_post("/switchover", self._switchover)
        r.add_delete("/switchover", self._delete_switchover)
        r.add_post("/failover", self._failover)
        r.add_post("/restart", self._restart)
        r.add_post("/reinitialize", self._reinitialize)

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

    async def _off_loop(self, fn: Callable[..., T], *args: Any) -> T:
        """Blocking calls (store, agent commands) run on worker threads, never on the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

    async def _snapshot(self) -> ClusterView:
        store = self._need_store()
        return await self._off_loop(store.snapshot, self._store_timeout)

    async def _view(self) -> ClusterView:
        """A fresh snapshot when there is a store, else the agent's last one."""
        if self._store is not None:
            return await self._snapshot()
        st = self._state()
        if st.cluster is None:
            raise HttpError(503, "no store snapshot yet")
        return st.cluster

    # -- read endpoints -------------------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.StreamResponse:
        path = request.path if request.path == "/" else request.path.rstrip("/")
        st = self._holder.get()
        query = {k: request.query.getone(k) for k in request.query}
        code = 503 if st is None else health_status(path, query, st, time.monotonic())
        if request.method in ("HEAD", "OPTIONS"):
            # HAProxy's `option httpchk` reads the status line only.
            return web.Response(status=code)
        body = status_json(st, self._cluster_name()) if st is not None else {
            "error": "the agent is starting: no state published yet"}
        return _json(code, body)

    async def _status(self, request: web.Request) -> web.StreamResponse:
        return _json(200, status_json(self._state(), self._cluster_name()))

    async def _cluster(self, request: web.Request) -> web.StreamResponse:
        st = self._state()
        if st.cluster is None:
            raise HttpError(503, "no store snapshot yet")
        return _json(200, cluster_json(st.cluster, self._cluster_name()))

    async def _history(self, request: web.Request) -> web.StreamResponse:
        return _json(200, history_json(await self._view()))

    async def _get_config(self, request: web.Request) -> web.StreamResponse:
        return _json(200, settings_json((await self._view()).settings))

    # -- settings -------------------------------------------------------------------------------

    async def _write_settings(self, view: ClusterView, new: ClusterSettings) -> web.StreamResponse:
        store = self._need_store()
        ok = await self._off_loop(store.set_settings, new, view.settings_token or None, self._store_timeout)
        if not ok:
            raise HttpError(409, "the settings changed while this request ran; read them again and retry")
        log.info("REST API: cluster settings changed: %s", settings_json(new))
        return _json(200, settings_json(new))

    async def _patch_config(self, request: web.Request) -> web.StreamResponse:
        body = parse_body(await request.read())
        view = await self._snapshot()
        return await self._write_settings(view, merge_settings(view.settings, body))

    async def _put_config(self, request: web.Request) -> web.StreamResponse:
        body = parse_body(await request.read())
        try:
            new = parse_settings(body, "settings")
        except ConfigError as e:
            raise HttpError(400, str(e)) from None
        view = await self._snapshot()
        return await self._write_settings(view, new)

    # -- switchover / failover ------------------------------------------------------------------

    async def _submit(self, view: ClusterView, req: FailoverRequest) -> web.StreamResponse:
        store = self._need_store()
        token = view.failover.token if view.failover is not None else None
        ok = await self._off_loop(store.set_failover, req, token, self._store_timeout)
        if not ok:
            raise HttpError(409, "another switchover or failover request was written meanwhile; retry")
        if req.kind == "switchover":
            target = f" to {req.candidate}" if req.candidate else ""
            when = f"scheduled at {_iso(req.scheduled_at)}" if req.scheduled_at is not None else "requested"
            msg = f"switchover from {req.leader}{target} {when}"
        else:
            msg = f"failover to {req.candidate} requested"
        log.info("REST API: %s", msg)
        return _json(202, {"message": msg})

    async def _switchover(self, request: web.Request) -> web.StreamResponse:
        body = parse_body(await request.read())
        check_fields(body, {"leader": _STR_OR_NULL, "candidate": _STR_OR_NULL, "member": _STR_OR_NULL,
                            "scheduled_at": (str, int, float, _NONE)}, "switchover")
        return await self._do_switchover(body)

    async def _do_switchover(self, body: Mapping[str, Any]) -> web.StreamResponse:
        scheduled = parse_schedule(body.get("scheduled_at"), "switchover")
        candidate = body.get("candidate") or body.get("member") or None
        view = await self._snapshot()
        req = validate_switchover(view, body.get("leader") or None, candidate, scheduled, time.time())
        return await self._submit(view, req)

    async def _failover(self, request: web.Request) -> web.StreamResponse:
        body = parse_body(await request.read())
        check_fields(body, {"leader": _STR_OR_NULL, "candidate": _STR_OR_NULL, "member": _STR_OR_NULL,
                            "scheduled_at": (str, int, float, _NONE)}, "failover")
        if body.get("leader"):
            # Patroni: a failover naming the leader is carried out as a switchover.
            return await self._do_switchover(body)
        if body.get("scheduled_at") not in (None, ""):
            raise HttpError(400, "a failover can't be scheduled; use a switchover")
        candidate = body.get("candidate") or body.get("member")
        if not candidate:
            raise HttpError(400, "a failover needs a candidate")
        view = await self._snapshot()
        return await self._submit(view, validate_failover(view, candidate, time.time()))

    async def _delete_switchover(self, request: web.Request) -> web.StreamResponse:
        store = self._need_store()
        view = await self._snapshot()
        if view.failover is None or view.failover.scheduled_at is None:
            raise HttpError(404, "no switchover is scheduled")
        await self._off_loop(store.clear_failover, self._store_timeout)
        return _json(200, {"message": "scheduled switchover deleted"})

    # -- local commands -------------------------------------------------------------------------

    def _need_commands(self) -> Commands:
        if self._commands is None:
            raise HttpError(503, "this node does not accept local commands")
        return self._commands

    async def _restart(self, request: web.Request) -> web.StreamResponse:
        body = parse_body(await request.read(), required=False)
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
            msg = await self._off_loop(commands.request_restart)
        except CommandRefused as e:
            raise HttpError(409, str(e)) from None
        return _json(200, {"message": msg})

    async def _reinitialize(self, request: web.Request) -> web.StreamResponse:
        body = parse_body(await request.read(), required=False)
        check_fields(body, {"force": (bool,)}, "reinitialize")
        commands = self._need_commands()
        try:
            msg = await self._off_loop(commands.request_reinitialize, bool(body.get("force", False)))
        except CommandRefused as e:
            raise HttpError(409, str(e)) from None
        return _json(200, {"message": msg})
