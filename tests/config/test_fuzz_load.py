"""The node-file loader under hypothesis: documents mutated from a valid node file (wrong types,
unknown and missing keys, deeper nesting, bad ports, odd YAML) are either a NodeConfig or a
ConfigError of one line naming the file and a key path; never another exception.

PGWARDEN_FUZZ_EXAMPLES raises the number of examples for a longer run (default 300)."""

from __future__ import annotations

import copy
import math
import os
import re
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgwarden.config.errors import ConfigError
from pgwarden.config.load import load_node_config, parse_node_config

EXAMPLES = int(os.environ.get("PGWARDEN_FUZZ_EXAMPLES", "300"))
SOURCE = "n1.yaml"

VALID: dict[str, Any] = {
    "cluster": "demo",
    "name": "node1",
    "data_dir": "/var/lib/pgwarden/node1",
    "postgresql": {
        "listen_address": "127.0.0.1", "port": 5432, "connect_address": "10.0.0.1:5432",
        "bin_dir": "/usr/lib/postgresql/15/bin", "os_user": "postgres",
        "parameters": {"work_mem": "8MB", "max_connections": 100, "archive_command": "/bin/true"},
        "superuser": {"username": "postgres", "password": "super-s3cret"},
        "replication": {"username": "replicator", "password": "repl-s3cret"},
        "pg_hba": ["host replication replicator 10.0.0.0/8 scram-sha-256"],
    },
    "restapi": {"listen_address": "127.0.0.1", "port": 8008, "connect_address": "10.0.0.1:8008",
                "authentication": {"username": "admin", "password": "api-s3cret"}, "max_connections": 64},
    "store": {"etcd": {"hosts": ["127.0.0.1:2379"], "prefix": "/pgwarden"}},
    "tags": {"nofailover": False, "failover_priority": 1, "replicatefrom": "node2"},
    "log": {"level": "INFO", "file": "/var/log/pgwarden.log"},
    "pgbouncer": {"admin": {"username": "pgbouncer", "password": "bouncer-pw"},
                  "config_file": "/etc/pgbouncer.ini", "port": 6432, "databases": ["postgres"]},
    "timing": {"ttl": 10, "loop_wait": 1, "retry_timeout": 1},
    "settings": {"synchronous_mode": "on", "maximum_lag_on_failover": 1048576,
                 "parameters": {"wal_level": "replica"}},
}
STORES = [{"zookeeper": {"hosts": ["127.0.0.1:2181"]}},
          {"raft": {"self_addr": "127.0.0.1:5010", "partner_addrs": ["127.0.0.1:5011"], "data_dir": "/r"}}]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-70000, 70000),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
    st.sampled_from(["", "on", "off", "yes", "0x10", "1e400", "-1", "65536", "5432", "127.0.0.1:x", ":",
                     "a" * 300, "~", "null", "\x00", "é", "../..", "*"]),
)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.one_of(st.text(max_size=8), st.integers()), inner,
                                                  max_size=3)), max_leaves=6)


def paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += paths(v, (*prefix, i))
    return out


@st.composite
def mutated(draw: st.DrawFn) -> tuple[Any, list[tuple[Any, ...]]]:
    """A copy of VALID with a few mutations; also the paths it touched."""
    doc: Any = copy.deepcopy(VALID)
    if draw(st.booleans()):
        doc["store"] = copy.deepcopy(draw(st.sampled_from(STORES)))
    touched = []
    for _ in range(draw(st.integers(1, 3))):
        here = paths(doc)
        if not here:
            break
        path = draw(st.sampled_from(here))
        parent = doc
        for part in path[:-1]:
            parent = parent[part]
        last = path[-1]
        op = draw(st.sampled_from(["replace", "replace", "delete", "unknown", "wrap", "nest"]))
        touched.append(path)
        if op == "replace":
            parent[last] = draw(values)
        elif op == "delete":
            del parent[last]
        elif op == "unknown" and isinstance(parent, dict):
            key = draw(st.sampled_from(["prot", "hosts2", "passwd", "x", "parameter", "ttl"]))
            parent[key] = draw(values)
        elif op == "wrap":
            parent[last] = [parent[last]]
        elif op == "nest":
            parent[last] = {"value": parent[last]}
    if draw(st.integers(0, 20)) == 0:
        doc = draw(values)  # not even a mapping
    return doc, touched


def check_refusal(e: ConfigError, source: str) -> None:
    msg = str(e)
    assert msg.startswith(f"{source}: "), msg
    assert "\n" not in msg and "Traceback" not in msg, msg


@settings(max_examples=EXAMPLES, deadline=None)
@given(mutated())
def test_a_mutated_node_file_is_loaded_or_refused_in_one_clear_line(case: tuple[Any, list[Any]]) -> None:
    doc, _ = case
    try:
        cfg = parse_node_config(doc, SOURCE)
    except ConfigError as e:
        check_refusal(e, SOURCE)
        msg = str(e)
        # the refusal names a key ('a.b' or a section), or says the top level is not a mapping
        assert re.search(r"'[^']*'|expected a mapping", msg), msg
    else:
        assert cfg.postgresql.superuser.secret() and 1 <= cfg.postgresql.port <= 65535
        s = cfg.initial_settings()
        assert math.isfinite(s.ttl) and s.loop_wait > 0


@settings(max_examples=max(EXAMPLES // 3, 50), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=mutated(), cut=st.integers(0, 2000), junk=st.sampled_from(
    ["", ":", "- ", "{", "!!python/object:os.system ls", "\t", "&a *a", "\x00", "key: [", "? x"]))
def test_a_mangled_yaml_file_is_loaded_or_refused(tmp_path: Path, case: tuple[Any, list[Any]], cut: int,
                                                 junk: str) -> None:
    doc, _ = case
    text = yaml.safe_dump(doc, allow_unicode=True)
    text = text[:cut] + junk + text[cut:]
    path = tmp_path / "n1.yaml"
    path.write_text(text)
    try:
        load_node_config(path)
    except ConfigError as e:
        check_refusal(e, str(path))
