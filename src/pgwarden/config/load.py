"""Read a node's YAML file and the cluster settings into models, and apply `--set KEY=VALUE`.

Checking is `validate.py`'s: a wrong key names its path and the nearest valid key ("did you
mean"), so the operator can fix it without reading our source.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import yaml

from pgwarden.config.errors import ConfigError
from pgwarden.config.schema import ClusterSettings, Credentials, NodeConfig, PgCredentials, password_problem
from pgwarden.config.validate import shown, validate
from pgwarden.core.settings import NODE_FILE_KEY, node_only

T = TypeVar("T", bound=msgspec.Struct)
log = logging.getLogger(__name__)


def field_names(model: type[msgspec.Struct]) -> tuple[str, ...]:
    return model.__struct_fields__


def _enc_hook(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    raise NotImplementedError(f"cannot write {type(obj).__name__}")


def to_data(model: msgspec.Struct) -> dict[str, Any]:
    """The model as plain JSON/YAML-ready data (enums as their values, paths as strings)."""
    data = _lists(msgspec.to_builtins(model, enc_hook=_enc_hook))
    assert isinstance(data, dict)
    return data


def _lists(value: Any) -> Any:
    """Tuples as lists, as JSON and YAML (safe_dump) want them."""
    if isinstance(value, tuple | list):
        return [_lists(v) for v in value]
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    return value


def replace(model: T, **changes: Any) -> T:
    """A copy with `changes`, validated again (a change can break a rule across fields)."""
    return validate(type(model), {**to_data(model), **changes}, type(model).__name__)


def parse_node_config(data: Any, source: str = "config") -> NodeConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of keys at the top level")
    return validate(NodeConfig, data, source)


def yaml_problem(e: yaml.YAMLError) -> str:
    """PyYAML's several-line error as one line: where, and what."""
    if isinstance(e, yaml.MarkedYAMLError):
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        what = " ".join(p for p in (e.context, e.problem) if p) or "cannot parse"
        return where + shown(what)
    return shown(" ".join(str(e).split()))


def load_node_config(path: str | Path) -> NodeConfig:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config file {p}: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {yaml_problem(e)}") from None
    cfg = parse_node_config(data, str(p))
    check_password_files(cfg, str(p))
    return cfg


def _credentials(cfg: NodeConfig) -> list[tuple[str, Credentials]]:
    found: list[tuple[str, Credentials]] = [("postgresql.superuser", cfg.postgresql.superuser),
                                           ("postgresql.replication", cfg.postgresql.replication)]
    if cfg.restapi.authentication is not None:
        found.append(("restapi.authentication", cfg.restapi.authentication))
    if cfg.pgbouncer is not None:
        found.append(("pgbouncer.admin", cfg.pgbouncer.admin))
    for name in ("etcd", "zookeeper"):
        backend = getattr(cfg.store, name)
        if backend is not None and backend.authentication is not None:
            found.append((f"store.{name}.authentication", backend.authentication))
    return found


def check_password_files(cfg: NodeConfig, source: str) -> None:
    """Every password_file the node file names is read now: one that cannot be read, is empty or
    (for a PostgreSQL role) is weak stops the loading with a line naming the key, rather than the
    agent failing later on every loop ("Bootstrap failed") for as long as it runs."""
    for where, cred in _credentials(cfg):
        if cred.password is not None or cred.password_file is None:
            continue
        try:
            password = cred.secret()
        except ValueError as e:
            raise ConfigError(f"{source}: {where}: {e}; make it readable by the user running "
                              f"pgwarden") from None
        if not password:
            raise ConfigError(f"{source}: {where}: password_file {cred.password_file} is empty; "
                              f"write the password into it")
        if isinstance(cred, PgCredentials) and (problem := password_problem(cred.username, password)):
            raise ConfigError(f"{source}: {where}: password_file {cred.password_file}: {problem}; "
                              f"use at least 8 characters that are not the username")


def parse_settings(data: Any, source: str = "cluster settings") -> ClusterSettings:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping")
    return validate(ClusterSettings, data, source)


_warned: set[tuple[str, tuple[str, ...]]] = set()


def parse_stored_settings(data: Any, source: str) -> ClusterSettings:
    """The settings document read from the store. Parameters only a node's file may set (written
    before they were refused, or straight into the store) are dropped with a warning, once: they
    never take effect from the store, and the rest of the document (synchronous_mode, timing) still
    does, rather than every setting falling back to its default."""
    params = data.get("parameters") if isinstance(data, dict) else None
    if isinstance(params, dict) and (dropped := tuple(sorted(str(k) for k in params if node_only(str(k))))):
        if (source, dropped) not in _warned:
            _warned.add((source, dropped))
            log.warning("%s: ignoring %s: parameters that run commands or load code are taken only from "
                        "a node's own file (%s)", source, ", ".join(dropped), NODE_FILE_KEY)
        data = {**data, "parameters": {k: v for k, v in params.items() if str(k) not in dropped}}
    return parse_settings(data, source)


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
