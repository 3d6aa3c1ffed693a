"""Request bodies: JSON parsing, field and type checks, schedule times and settings patches, each
failure an HttpError(400) that names the offending field; subscriptions' source passwords kept."""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pgwarden.api.messages import HttpError
from pgwarden.config.errors import ConfigError
from pgwarden.config.load import field_names, parse_settings, replace, to_data
from pgwarden.config.schema import ClusterSettings
from pgwarden.core.logical import SubscriptionSpec
from pgwarden.report import redact

NULL = type(None)
STR_OR_NULL: tuple[type, ...] = (str, NULL)


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
             NULL: "null"}
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
    data: dict[str, Any] = to_data(current)  # not settings_json: that one hides passwords
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


def keep_source_passwords(current: ClusterSettings, new: ClusterSettings) -> ClusterSettings:
    """A subscription sent back the way GET showed it, its source password redacted, keeps the
    stored source: a GET, edit, PUT round trip must not write `password=***` over the real one."""
    stored = {sub.name: sub.source for sub in current.subscriptions}

    def kept(sub: SubscriptionSpec) -> SubscriptionSpec:
        was = stored.get(sub.name)
        if was is not None and sub.source != was and redact(was) == sub.source:
            return replace(sub, source=was)
        return sub
    subs = tuple(kept(sub) for sub in new.subscriptions)
    return new if subs == new.subscriptions else replace(new, subscriptions=subs)
