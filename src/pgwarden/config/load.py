"""Read and validate a node's YAML file; turn validation failures into one clear message each.

A wrong key names its path and the nearest valid key ("did you mean"), so the operator can fix
it without reading our source.
"""

from __future__ import annotations

import difflib
import functools
import re
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import yaml

from pgwarden.config.schema import ClusterSettings, NodeConfig

T = TypeVar("T", bound=msgspec.Struct)


class ConfigError(Exception):
    """The configuration cannot be used; the message says what to change."""


def field_names(model: type[msgspec.Struct]) -> tuple[str, ...]:
    return model.__struct_fields__


def _struct_in(annotation: Any) -> type[msgspec.Struct] | None:
    """The Struct type in `annotation` (itself, or the non-None member of an optional)."""
    for cand in (annotation, *typing.get_args(annotation)):
        if isinstance(cand, type) and issubclass(cand, msgspec.Struct):
            return cand
    return None


@functools.cache
def _field_types(model: type[msgspec.Struct]) -> dict[str, Any]:
    return {f.name: f.type for f in msgspec.structs.fields(model)}


def unknown_keys(model: type[msgspec.Struct], data: Any, path: tuple[str, ...] = ()) -> list[str]:
    """Every key in `data` that `model` (or a nested model) does not have, each with the nearest
    valid key. msgspec stops at the first error; typos are the common mistake, so all of them are
    reported at once."""
    if not isinstance(data, dict):
        return []
    out: list[str] = []
    fields = _field_types(model)
    for key, value in data.items():
        where = (*path, str(key))
        if key not in fields:
            valid = sorted(fields)
            guess = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.5)
            hint = f"; did you mean '{guess[0]}'?" if guess else ""
            owner = ".".join(path) or "the top level"
            out.append(f"unknown key '{'.'.join(where)}'{hint} (valid keys at {owner}: {', '.join(valid)})")
        elif (sub := _struct_in(fields[key])) is not None:
            out += unknown_keys(sub, value, where)
    return out


_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_MISSING = re.compile(r"^Object missing required field `(?P<name>[^`]+)`$")


def describe_error(err: msgspec.ValidationError, source: str) -> str:
    """msgspec's "what - at `$.a.b`" as "source: 'a.b': what"."""
    m = _AT.match(str(err))
    msg, path = (m.group("msg"), m.group("path") or "") if m else (str(err), "")
    dotted = re.sub(r"\[(\d+)\]", r".\1", path).lstrip(".")
    if miss := _MISSING.match(msg):
        key = ".".join(p for p in (dotted, miss.group("name")) if p)
        return f"{source}: missing required key '{key}'"
    return f"{source}: '{dotted}': {msg}" if dotted else f"{source}: {msg}"


def _dec_hook(kind: type, obj: Any) -> Any:
    if kind is Path and isinstance(obj, str):
        return Path(obj)
    raise NotImplementedError(f"cannot read {kind!r} from {type(obj).__name__}")


def _enc_hook(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    raise NotImplementedError(f"cannot write {type(obj).__name__}")


def convert(model: type[T], data: Any) -> T:
    """msgspec's conversion with the types our models use; raises msgspec.ValidationError. Lax
    like YAML users expect: "5432" for a port, 3 for a float."""
    return msgspec.convert(data, model, strict=False, dec_hook=_dec_hook)


def validate(model: type[T], data: Any, source: str = "config") -> T:
    """`data` as a `model`, or ConfigError naming every unknown key, or else the first problem."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of keys")
    if unknown := unknown_keys(model, data):
        raise ConfigError("\n".join(f"{source}: {u}" for u in unknown))
    try:
        return convert(model, data)
    except msgspec.ValidationError as e:
        raise ConfigError(describe_error(e, source)) from None


def to_data(model: msgspec.Struct) -> dict[str, Any]:
    """The model as plain JSON/YAML-ready data (enums as their values, paths as strings)."""
    data = msgspec.to_builtins(model, enc_hook=_enc_hook)
    assert isinstance(data, dict)
    return data


def replace(model: T, **changes: Any) -> T:
    """A copy with `changes`, validated again (a change can break a rule across fields)."""
    return validate(type(model), {**to_data(model), **changes}, type(model).__name__)


def parse_node_config(data: Any, source: str = "config") -> NodeConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of keys at the top level")
    return validate(NodeConfig, data, source)


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
    return validate(ClusterSettings, data, source)


def apply_setting(settings: ClusterSettings, assignment: str) -> ClusterSettings:
    """Apply one `KEY=VALUE` (see `apply_settings`)."""
    return apply_settings(settings, [assignment])


def apply_settings(settings: ClusterSettings, assignments: Sequence[str]) -> ClusterSettings:
    """Apply `KEY=VALUE` assignments (from `--set`) together, then validate the result once, so
    changes that are only valid together (ttl=2 with loop_wait=0.25) can be made in one go.

    VALUE is parsed as YAML. `parameters.NAME=VALUE` (or `postgresql.parameters.NAME`) sets a
    PostgreSQL parameter; an empty VALUE removes it.
    """
    data = to_data(settings)
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
    fields = field_names(ClusterSettings)
    if key not in fields:
        guess = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.5)
        hint = f"; did you mean '{guess[0]}'?" if guess else ""
        raise ConfigError(f"unknown setting '{key}'{hint} (settings: {', '.join(sorted(fields))})")
    # YAML would read `on`/`off` as booleans; synchronous_mode wants the words.
    data[key] = raw if key in ("synchronous_mode", "failover_mode") else yaml.safe_load(raw)
