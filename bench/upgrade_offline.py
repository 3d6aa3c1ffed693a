"""The offline baseline of the upgrade benchmark: `pg_upgrade --link` of a stopped 3-node
`pgwarden local` PostgreSQL 15 cluster to the embedded 18, then the leader brought up on 18 under
the same agents and the standbys cloned again.

pg_upgrade makes a new cluster with a new system identifier, which the store's `initialize` key
does not match (the agent refuses such data: "reinitialize this node"), and the standbys' 15 data
cannot follow an 18 primary. So: the new data directory is made by `initdb` while the cluster
still runs (outside the downtime, as an operator would); then, with every agent stopped,
`pg_upgrade --link`, the new data directory takes the old one's place on the leader, every node
file's `postgresql.bin_dir` names the 18 binaries, the store keeps the cluster settings but
forgets the old cluster's identity, leader, timeline history and members, and the standbys' data
directories are removed. The leader's agent then adopts the upgraded data ("initialising the
cluster from existing data"), and the standbys' agents clone it.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.procs import free_port, wait_for
from bench.routing import pgwarden
from bench.upgrade_cluster import PG15, leader, node_dirs, node_file
from pgwarden.config.load import load_node_config
from pgwarden.local.layout import write_node_config
from pgwarden.postgres import osuser
from pgwarden.postgres.binaries import find_bin_dir, reachable_bin_dir
from pgwarden.store.base import ANY
from pgwarden.store.documents import CONFIG
from pgwarden.store.factory import open_tool_store

# What `DataDirectory.bootstrap` (src/pgwarden/postgres/provision.py) gives initdb, so pg_upgrade
# finds the same encoding, locale, checksums and authentication in both clusters.
INITDB_OPTIONS = ("-E", "UTF8", "--no-locale", "--data-checksums", "--auth-local=peer",
                  "--auth-host=scram-sha-256")


@dataclass(frozen=True)
class OfflineTimes:
    """Monotonic instants of the steps, for the report."""

    stopping: float
    stopped: float
    upgraded: float
    leader_started: float
    standbys_started: float


def new_bin_dir() -> Path:
    """The embedded PostgreSQL 18, found as `local up` finds it (no --bin-dir)."""
    return find_bin_dir(None)


def _run_as_postgres(argv: list[str], cwd: Path, what: str, timeout: float = 600) -> str:
    res = osuser.run_as("postgres", argv, timeout=timeout, cwd=cwd)
    if res.returncode != 0:
        raise SystemExit(f"{what} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res.stdout


def init_new_data(node: Path, work: Path) -> Path:
    """initdb the 18 data directory beside the node's 15 one, while the cluster still runs (an
    operator prepares it before the downtime too); the new data directory."""
    cfg = load_node_config(str(node / "pgwarden.yaml"))
    uid, gid = osuser.ensure_os_user(cfg.postgresql.os_user)
    new_bin = reachable_bin_dir(new_bin_dir(), cfg.postgresql.os_user)
    new_data = node / "data-18"
    osuser.prepare_dir(new_data, uid, gid)
    osuser.prepare_dir(work, uid, gid, 0o755)
    pwfile = work / "pwfile"
    osuser.give_file(pwfile, cfg.postgresql.superuser.secret() + "\n", uid, gid)
    try:
        _run_as_postgres([str(new_bin / "initdb"), "-D", str(new_data), "-U",
                          cfg.postgresql.superuser.username, f"--pwfile={pwfile}", *INITDB_OPTIONS],
                         work, "initdb of the new data directory")
    finally:
        pwfile.unlink(missing_ok=True)
    return new_data


def pg_upgrade_link(node: Path, new_data: Path, work: Path) -> None:
    """`pg_upgrade --link` the stopped node's 15 data into `new_data` and swap them (the 15 one
    stays as data-15, its files now shared with the new one)."""
    cfg = load_node_config(str(node / "pgwarden.yaml"))
    new_bin = reachable_bin_dir(new_bin_dir(), cfg.postgresql.os_user)
    old_data = Path(cfg.data_dir)
    # Ports of our own: pg_upgrade's default 50432 may be taken by another run on this host.
    _run_as_postgres([str(new_bin / "pg_upgrade"), "--link", "-b", str(PG15), "-B", str(new_bin),
                      "-d", str(old_data), "-D", str(new_data), "-U", cfg.postgresql.superuser.username,
                      "-p", str(free_port()), "-P", str(free_port())], work, "pg_upgrade --link")
    os.rename(old_data, node / "data-15")
    os.rename(new_data, old_data)


def point_at_new_binaries(directory: Path) -> None:
    for n in node_dirs(directory):
        doc = node_file(n)
        doc["postgresql"]["bin_dir"] = str(new_bin_dir())
        write_node_config(n / "pgwarden.yaml", doc)


def forget_old_cluster(node: Path) -> list[str]:
    """Delete every key of the cluster in the store except its settings; the keys deleted."""
    cfg = load_node_config(str(node / "pgwarden.yaml"))
    store = open_tool_store(cfg.store, cfg.cluster)
    try:
        keys = [k for k in store.kv.read(10) if k != CONFIG]
        for k in keys:
            store.kv.delete(k, ANY, 10)
        return keys
    finally:
        store.kv.close()


def upgrade_offline(directory: Path, members: int, log: Callable[[str], None]) -> OfflineTimes:
    """initdb the new data directory, stop the agents (replicas first, then the leader, as `local
    down` orders them), pg_upgrade the leader's data, and start the agents again on 18: the leader
    first (it adopts the data), then the standbys (which clone it). Returns when every agent is
    started; the caller waits for the writes and for streaming."""
    lead = wait_for(lambda: leader(directory), 60, f"a leader in {directory}")
    nodes = node_dirs(directory)
    work = directory / "pg_upgrade-work"
    new_data = init_new_data(directory / lead, work)
    stopping = time.monotonic()
    for n in [n for n in nodes if n.name != lead] + [n for n in nodes if n.name == lead]:
        pgwarden("local", "stop", "--dir", str(directory), n.name, timeout=180)
    stopped = time.monotonic()
    log(f"  agents stopped in {stopped - stopping:.1f} s; pg_upgrade --link of {lead} ...")
    pg_upgrade_link(directory / lead, new_data, work)
    upgraded = time.monotonic()
    log(f"  pg_upgrade --link took {upgraded - stopped:.1f} s; starting {lead} on 18 ...")
    point_at_new_binaries(directory)
    forgot = forget_old_cluster(directory / lead)
    log(f"  store: deleted {', '.join(sorted(forgot))}")
    for n in nodes:
        if n.name != lead:
            shutil.rmtree(n / "data")  # the 15 standbys' data cannot follow an 18 primary
    pgwarden("local", "start", "--dir", str(directory), lead)
    # The standbys wait until the leader has initialised the cluster: an agent with an empty data
    # directory that found no `initialize` key would bootstrap a new cluster itself.
    wait_for(lambda: leader(directory) == lead, 180, f"{lead} leading on 18")
    leader_started = time.monotonic()
    for n in nodes:
        if n.name != lead:
            pgwarden("local", "start", "--dir", str(directory), n.name)
    return OfflineTimes(stopping, stopped, upgraded, leader_started, time.monotonic())
