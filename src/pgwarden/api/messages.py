"""What the transport hands a route and gets back: Request, Response, HttpError (a client-facing
failure) and Disconnect (nobody left to answer), plus the JSON answer every route gives."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

_JSON_TYPE = "application/json; charset=utf-8"


class HttpError(Exception):
    """A client-facing failure: answered as `status` with {"error": message}."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Disconnect(Exception):
    """The client went away or stopped sending mid-request: there is nobody to answer."""


@dataclass(frozen=True)
class Request:
    """What a route handler sees: the method, the percent-decoded path, the query (first value of
    each key), the body, read on demand (HttpError 413 past the cap, 400 if malformed), and the
    header fields (lower-case names; a repeated field's values joined by ", ")."""

    method: str
    path: str
    query: Mapping[str, str]
    read: Callable[[], bytes]
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)


Route = Callable[[Request], Response]


def json_response(status: int, body: Any, headers: Mapping[str, str] | None = None) -> Response:
    data = json.dumps(body, sort_keys=True).encode("utf-8")
    return Response(status, data, {"Content-Type": _JSON_TYPE, **(headers or {})})
