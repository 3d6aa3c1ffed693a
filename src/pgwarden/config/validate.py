"""Plain data (parsed YAML or JSON) checked against a msgspec model: every unknown key reported
with the nearest valid one, else the first problem as "source: 'a.b': what"."""

from __future__ import annotations

import difflib
import functools
import re
import typing
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from pgwarden.config.errors import ConfigError

T = TypeVar("T", bound=msgspec.Struct)


def _struct_in(annotation: Any) -> type[msgspec.Struct] | None:
    """The Struct type in `annotation` (itself, or the non-None member of an optional)."""
    for cand in (annotation, *typing.get_args(annotation)):
        if isinstance(cand, type) and issubclass(cand, msgspec.Struct):
            return cand
    return None


@functools.cache
def _field_types(model: type[msgspec.Struct]) -> dict[str, Any]:
    return {f.name: f.type for f in msgspec.structs.fields(model)}


_UNPRINTABLE = re.compile(r"[^\x20-\x7e\u00a0-\uffff]")


def shown(key: Any) -> str:
    """A key as an error line can show it: control characters escaped, so one problem stays
    one line (found by fuzzing: a key with a newline split its own error message)."""
    return _UNPRINTABLE.sub(lambda m: repr(m.group())[1:-1], str(key))


def unknown_keys(model: type[msgspec.Struct], data: Any, path: tuple[str, ...] = ()) -> list[str]:
    """Every key in `data` that `model` (or a nested model) does not have, each with the nearest
    valid key. msgspec stops at the first error; typos are the common mistake, so all of them are
    reported at once."""
    if not isinstance(data, dict):
        return []
    out: list[str] = []
    fields = _field_types(model)
    for key, value in data.items():
        where = (*path, shown(key))
        if key not in fields:
            valid = sorted(fields)
            guess = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.5)
            hint = f"; did you mean '{guess[0]}'?" if guess else ""
            owner = ".".join(path) or "the top level"
            out.append(f"unknown key '{'.'.join(where)}'{hint} (valid keys at {owner}: {', '.join(valid)})")
        elif (sub := _struct_in(fields[key])) is not None:
            out += unknown_keys(sub, value, where)
    return out


_AT = re.compile(r"^(?P<msg>.*?)(?: - at (?P<key>`key` in )?`\$(?P<path>[^`]*)`)?$", re.S)
_MISSING = re.compile(r"^Object missing required field `(?P<name>[^`]+)`$")


# What to write for a required key that is missing, where the key's name alone does not say.
_ROLE = ("username and password (or password_file) of the PostgreSQL role pgwarden {what}; "
         "the password needs 8 characters or more, not the username")
REQUIRED_HINTS = {
    "postgresql": "(with superuser and replication credentials)",
    "postgresql.superuser": _ROLE.format(what="connects as to manage the server"),
    "postgresql.replication": _ROLE.format(what="replicas stream as"),
}


def describe_error(err: msgspec.ValidationError, source: str) -> str:
    """msgspec's "what - at `$.a.b`" as "source: 'a.b': what"."""
    m = _AT.match(str(err))
    msg, path = (m.group("msg"), m.group("path") or "") if m else (str(err), "")
    if m and m.group("key"):
        msg = f"a key: {msg}"  # a mapping's key, not its value, has the wrong type
    dotted = re.sub(r"\[(\d+)\]", r".\1", path).lstrip(".")
    if miss := _MISSING.match(msg):
        key = ".".join(p for p in (dotted, miss.group("name")) if p)
        hint = f"; set {key}: {REQUIRED_HINTS[key]}" if key in REQUIRED_HINTS else ""
        return f"{source}: missing required key '{key}'{hint}"
    return f"{source}: '{dotted}': {msg}" if dotted else f"{source}: {msg}"


def _dec_hook(kind: type, obj: Any) -> Any:
    if kind is Path and isinstance(obj, str):
        return Path(obj)
    # A TypeError becomes msgspec's ValidationError, with the key's path (found by fuzzing: a
    # list where a path belongs escaped as a NotImplementedError).
    name = "a path" if kind is Path else getattr(kind, "__name__", str(kind))
    raise TypeError(f"Expected {name} (a string), got `{type(obj).__name__}`")


def convert(model: type[T], data: Any) -> T:
    """msgspec's conversion with the types our models use; raises msgspec.ValidationError. Lax
    like YAML users expect: "5432" for a port, 3 for a float."""
    return msgspec.convert(data, model, strict=False, dec_hook=_dec_hook)


def validate(model: type[T], data: Any, source: str = "config") -> T:
    """`data` as a `model`, or a one-line ConfigError naming every unknown key, or else the first
    problem."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of keys")
    if unknown := unknown_keys(model, data):
        # All of them (typos come in groups), on one line: "source: unknown key 'a' ...; unknown key 'b' ..."
        raise ConfigError(f"{source}: " + "; ".join(unknown))
    try:
        return convert(model, data)
    except msgspec.ValidationError as e:
        raise ConfigError(shown(describe_error(e, source))) from None
