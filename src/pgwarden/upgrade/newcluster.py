"""The upgrade's new cluster: next to the old one under DIR (DIR/pg<major>), on the new binaries,
with the old one's settings, store kind, superuser and replication passwords (so PgBouncer's
userlist and the clients' credentials work against both) and PgBouncer configured for its agents,
which leave PgBouncer alone until its owner line names them (routing/pgbouncer.py)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pgwarden.config.load import to_data
from pgwarden.config.schema import NodeConfig
from pgwarden.core.settings import ClusterSettings
from pgwarden.errors import CliError
from pgwarden.local.cluster import LocalCluster, Options
from pgwarden.local.handle import node_file
from pgwarden.local.layout import cluster_name, load_state

# Settings a new cluster takes over from the old one (not its pause, standby role, slots or
# declared replication: those belong to the old cluster).
COPIED = ("ttl", "loop_wait", "retry_timeout", "maximum_lag_on_failover", "synchronous_mode",
          "synchronous_node_count", "synchronous_mode_strict", "failover_mode", "use_pg_rewind",
          "failsafe")


def new_dir_for(directory: Path, major: int) -> Path:
    d = directory / f"pg{major}"
    return d if cluster_name(d) != cluster_name(directory) else directory / f"pg{major}-new"


def assignments(settings: ClusterSettings) -> list[str]:
    """`--set` lines reproducing the old cluster's settings; the new one publishes too (the
    reverse replication after the cutover), so wal_level is logical."""
    data, defaults = to_data(settings), to_data(ClusterSettings())
    # `--set` reads values as YAML, except these two words (which YAML would read as booleans).
    raw = ("synchronous_mode", "failover_mode")
    out = [f"{key}={data[key] if key in raw else json.dumps(data[key])}"
           for key in COPIED if data[key] != defaults[key]]
    params = {**settings.parameters, "wal_level": "logical"}
    out += [f"parameters.{k}={v}" for k, v in params.items()]
    return out


def old_node_files(old: LocalCluster) -> list[NodeConfig]:
    cfgs = [c for c in (node_file(r) for r in old.current_state().agents()) if c is not None]
    if not cfgs:
        raise CliError(f"no readable node file under {old.directory}")
    return cfgs


def pgbouncer_section(cfg: NodeConfig) -> dict[str, Any]:
    pb = cfg.pgbouncer
    if pb is None:
        raise CliError("the old cluster's node files have no pgbouncer section")
    return {"host": pb.host, "port": pb.port,
            "admin": {"username": pb.admin.username, "password": pb.admin.secret()},
            "databases": list(pb.databases), "config_file": str(pb.config_file),
            "pause_timeout": pb.pause_timeout}


def create(old: LocalCluster, new_dir: Path, bin_dir: Path, nodes: int, timeout: float) -> LocalCluster:
    """Create and start the new cluster in the empty `new_dir`."""
    view = old.view(1.0)
    if view is None:
        raise CliError(f"cannot read the old cluster's settings from its store ({old.directory})")
    cfg = old_node_files(old)[0]
    section = pgbouncer_section(cfg)

    def amend(doc: dict[str, Any]) -> None:
        doc["pgbouncer"] = dict(section)

    opts = Options(nodes=nodes, assignments=tuple(assignments(view.settings)), timeout=timeout,
                   store=old.store_kind(), bin_dir=bin_dir,
                   passwords=(cfg.postgresql.superuser.secret(), cfg.postgresql.replication.secret()),
                   amend_node=amend)
    new = LocalCluster(new_dir, old.out)
    new.up(opts)
    return new


def remove(new_dir: Path, out: Callable[[str], None]) -> None:
    """Stop and delete a new cluster (its processes first, by the PIDs its state recorded)."""
    if load_state(new_dir) is not None:
        new = LocalCluster(new_dir, out)
        try:
            new.down()
        finally:
            new.close()
    shutil.rmtree(new_dir, ignore_errors=True)
