"""The API's observability routes: GET /metrics (Prometheus), GET /decisions (the decision log,
behind the credentials: it shows LSNs, peers and the observation) and GET /dashboard (one page,
served from the package; it polls the JSON endpoints). The heavy pieces (prometheus_client, the
page) load on first use, so an agent nobody scrapes does not carry them.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from importlib.resources import files

from pgwarden.api.messages import HttpError, Request, Response, Route, json_response
from pgwarden.api.state import StateHolder
from pgwarden.api.telemetry import Telemetry, facts_json, record_json

MAX_DECISIONS = 1000
# The page loads nothing from elsewhere: its script and style are inline, its data same-origin.
_CSP = ("default-src 'self'; img-src 'self' data:; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "frame-ancestors 'none'")


def add_observability_routes(routes: dict[str, dict[str, Route]], holder: StateHolder,
                             telemetry: Telemetry | None, node: str,
                             scope: Callable[[], str | None]) -> None:
    def metrics(request: Request) -> Response:
        from pgwarden.api import metrics as m  # prometheus_client: loaded on the first scrape

        body = m.render(holder.get(), telemetry, node, scope())
        return Response(200, body, {"Content-Type": m.CONTENT_TYPE})

    def decisions(request: Request) -> Response:
        if telemetry is None:
            raise HttpError(503, "this node keeps no decision log")
        last = _number(request.query.get("last"), "last", int)
        since = _number(request.query.get("since"), "since", float)
        full = request.query.get("full", "") in ("1", "true", "yes")
        records = telemetry.decisions(int(last) if last is not None else None, since)
        return json_response(200, {"node": node, "scope": scope(), "facts": facts_json(telemetry),
                                   "decisions": [record_json(r, full) for r in records]})

    def dashboard(request: Request) -> Response:
        return Response(200, _page(), {"Content-Type": "text/html; charset=utf-8",
                                       "Cache-Control": "no-store", "Content-Security-Policy": _CSP})

    routes["/metrics"] = {"GET": metrics}
    routes["/decisions"] = {"GET": decisions}
    routes["/dashboard"] = {"GET": dashboard}


def _number(text: str | None, name: str, kind: type[int] | type[float]) -> float | None:
    if text is None or text == "":
        return None
    try:
        value = kind(text)
    except ValueError:
        raise HttpError(400, f"{name}={text!r} is not a number") from None
    if value < 0 or (kind is int and value > MAX_DECISIONS):
        raise HttpError(400, f"{name}={text!r} is out of range")
    return value


@cache
def _page() -> bytes:
    return files("pgwarden.api").joinpath("dashboard.html").read_bytes()
