"""Helpers shared by the CLI and local-cluster tests: run `main` capturing its output, write a
node file, publish a cluster into a real store the way agents would (no agents needed)."""

from __future__ import annotations

import io
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pgwarden.cli.main import main
from pgwarden.core.model import MemberInfo, Role, Tags
from pgwarden.store.cluster import ClusterStore

MEMBER_TTL = 60.0
TIMEOUT = 5.0


@dataclass
class Result:
    code: int
    out: str
    err: str


def run_cli(*argv: str) -> Result:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(list(argv))
    return Result(code, out.getvalue(), err.getvalue())


def write_node_file(path: Path, cluster: str, etcd_endpoint: str, **extra: Any) -> Path:
    doc: dict[str, Any] = {
        "cluster": cluster,
        "name": "node1",
        "data_dir": str(path.parent / "data"),
        "postgresql": {"port": 5432, "superuser": {"username": "postgres", "password": "s3cr@t/pw"},
                       "replication": {"username": "replicator", "password": "repl-s3cret"}},
        "store": {"etcd": {"hosts": [etcd_endpoint]}},
    }
    doc.update(extra)
    path.write_text(yaml.safe_dump(doc))
    return path


def member(
    name: str,
    role: Role,
    port: int,
    lsn: int | None,
    *,
    state: str = "running",
    upstream: str | None = None,
    tags: Tags | None = None,
    timeline: int = 1,
    api_url: str | None = None,
) -> MemberInfo:
    return MemberInfo(
        name=name, api_url=api_url or f"http://127.0.0.1:{8000 + port % 1000}", host="127.0.0.1",
        port=port, role=role, state=state, running=state == "running", timeline=timeline, lsn=lsn,
        upstream=upstream, tags=tags or Tags(),
    )


def publish_cluster(store: ClusterStore, members: list[MemberInfo], leader: str | None) -> None:
    """What running agents would have written: member keys and the leader lease."""
    for m in members:
        store.publish_member(m, MEMBER_TTL, TIMEOUT)
    if leader is not None:
        assert store.acquire_leader(leader, MEMBER_TTL, TIMEOUT)
