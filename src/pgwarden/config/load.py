"""Read and validate a node's YAML file; turn validation failures into one clear message each.

A wrong key names its path and the nearest valid key ("did you mean"), so the operator can fix
it without reading our source.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from pgwarden.config.schema import ClusterSettings, NodeConfig


class ConfigError(Exception):
    """The configuration cannot be used; the message says what to change."""


def _model_at(model: type[BaseModel], path: tuple[str | int, ...]) -> type[BaseModel] | None:
    """The pydantic model that owns the mapping at `path` (for suggesting key names)."""
    current: type[BaseModel] | None = model
    for part in path:
        if current is None or not isinstance(part, str):
            return None
        field = current.model_fields.get(part)
        if field is None:
            return None
        ann = field.annotation
        nxt: type[BaseModel] | None = None
        for cand in (ann, *getattr(ann, "__args__", ())):
            if isinstance(cand, type) and issubclass(cand, BaseModel):
                nxt = cand
                break
        current = nxt
    return current


def describe_errors(err: ValidationError, model: type[BaseModel], source: str) -> str:
    lines: list[str] = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        dotted = ".".join(str(p) for p in loc) or "(top level)"
        if e["type"] == "extra_forbidden":
            owner = _model_at(model, loc[:-1])
            valid = sorted(owner.model_fields) if owner else []
            guess = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
            hint = f"; did you mean '{guess[0]}'?" if guess else ""
            where = ".".join(str(p) for p in loc[:-1]) or "the top level"
            lines.append(
                f"{source}: unknown key '{dotted}'{hint} (valid keys at {where}: {', '.join(valid)})"
            )
        elif e["type"] == "missing":
            lines.append(f"{source}: missing required key '{dotted}'")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"{source}: '{dotted}': {msg}" if loc else f"{source}: {msg}")
    return "\n".join(lines)


def parse_node_config(data: Any, source: str = "config") -> NodeConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of keys at the top level")
    try:
        return NodeConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(describe_errors(e, NodeConfig, source)) from None


def load_node_config(path: str | Path) -> NodeConfig:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config file {p}: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    return parse_node_config(data, str(p))


def parse_settings(data: Any, source: str = "cluster settings") -> ClusterSettings:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping")
    try:
        return ClusterSettings.model_validate(data)
    except ValidationError as e:
        raise ConfigError(describe_errors(e, ClusterSettings, source)) from None


def apply_setting(settings: ClusterSettings, assignment: str) -> ClusterSettings:
    """Apply one `KEY=VALUE` (see `apply_settings`)."""
    return apply_settings(settings, [assignment])


def apply_settings(settings: ClusterSettings, assignments: Sequence[str]) -> ClusterSettings:
    """Apply `KEY=VALUE` assignments (from `--set`) together, then validate the result once, so
    changes that are only valid together (ttl=2 with loop_wait=0.25) can be made in one go.

    VALUE is parsed as YAML. `parameters.NAME=VALUE` (or `postgresql.parameters.NAME`) sets a
    PostgreSQL parameter; an empty VALUE removes it.
    """
    data = settings.model_dump(mode="json")
    for assignment in assignments:
        _assign(data, assignment)
    return parse_settings(data, "--set " + " --set ".join(assignments))


def _assign(data: dict[str, Any], assignment: str) -> None:
    key, sep, raw = assignment.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set takes KEY=VALUE, got '{assignment}'")
    key = key.removeprefix("postgresql.")
    if key.startswith("parameters."):
        name = key.split(".", 1)[1]
        params = dict(data.get("parameters", {}))
        if raw == "":
            params.pop(name, None)
        else:
            params[name] = raw
        data["parameters"] = params
        return
    if key not in ClusterSettings.model_fields:
        guess = difflib.get_close_matches(key, list(ClusterSettings.model_fields), n=1, cutoff=0.5)
        hint = f"; did you mean '{guess[0]}'?" if guess else ""
        raise ConfigError(
            f"unknown setting '{key}'{hint} (settings: {', '.join(sorted(ClusterSettings.model_fields))})"
        )
    # YAML would read `on`/`off` as booleans; synchronous_mode wants the words.
    data[key] = raw if key in ("synchronous_mode", "failover_mode") else yaml.safe_load(raw)
