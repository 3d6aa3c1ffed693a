"""Secrets stay secret (issue 14): after a failover and a rejoin, none of a running cluster's
passwords (PostgreSQL superuser and replication, the REST API's, the store user's, etcd's root)
appears in the store, any log, the API's answers, `ctl` output or any process's command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from pgwarden.store.documents import LAYOUT
from pgwarden.store.etcd import EtcdKV
from tests.support.cluster import Cluster

pytestmark = pytest.mark.integration

API_PATHS = ("/status", "/config", "/cluster", "/history", "/patroni", "/position")
CTL = (("list",), ("history",), ("show-config",), ("topology",), ("dsn",))


def _secrets(cl: Cluster) -> dict[str, str]:
    doc = cl.config(cl.names[0])
    pg = doc["postgresql"]
    found = {
        "superuser": pg["superuser"]["password"],
        "replication": pg["replication"]["password"],
        "restapi": doc["restapi"]["authentication"]["password"],
    }
    for f in sorted((cl.dir / "secrets").iterdir()):
        found[f.name] = f.read_text().strip()
    assert all(len(v) >= 8 for v in found.values()), found.keys()
    return found


def _cmdlines() -> str:
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                out.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
            except OSError:
                continue  # gone meanwhile
    return "\n".join(out)


def _store_dump(cl: Cluster) -> str:
    store = cl.config(cl.names[0])["store"]["etcd"]
    password = Path(store["authentication"]["password_file"]).read_text().strip()
    kv = EtcdKV(store["hosts"], cl.config(cl.names[0])["cluster"], LAYOUT,
                credentials=(store["authentication"]["username"], password))
    try:
        return "\n".join(f"{k}={e.value}" for k, e in kv.read(5.0).items())
    finally:
        kv.close()


def test_no_secret_leaks_after_a_failover() -> None:
    with Cluster("secrets") as cl:
        old = cl.wait_primary()
        cl.wait_replicas([n for n in cl.names if n != old])
        cl.sql(old, "CREATE TABLE s (id int)")
        cl.kill_node(old)
        new = cl.wait_primary(timeout=60, exclude=(old,))
        cl.start_node(old)
        cl.wait_replicas([n for n in cl.names if n != new], timeout=120)

        places: dict[str, str] = {"store": _store_dump(cl), "command lines": _cmdlines()}
        for log in sorted(cl.dir.rglob("*.log")):
            places[str(log.relative_to(cl.dir))] = log.read_text(errors="replace")
        for node in cl.names:
            for path in API_PATHS:
                code, body = cl.http("GET", node, path)
                assert code == 200, (node, path, code)
                places[f"{node} GET {path}"] = str(body)
        for args in CTL:
            r = cl.ctl(*args)
            places[f"ctl {' '.join(args)}"] = r.stdout + r.stderr
        assert len(places) > 20  # the logs, answers and outputs above were all read

        for what, secret in _secrets(cl).items():
            leaks = [place for place, text in places.items() if secret in text]
            assert not leaks, f"the {what} password appears in: {', '.join(leaks)}"
