"""What every `pgwarden ctl` command works with, shared by the command modules (ctl.py,
logical.py, explain.py): the node file and its store (`Ctx`), the store's description for
messages, the superuser's credentials, and changing the cluster settings by compare-and-swap."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

from pgwarden.config.schema import ClusterSettings, NodeConfig, StoreConfig
from pgwarden.core.model import ClusterView
from pgwarden.errors import CliError, UsageError
from pgwarden.store.cluster import ClusterStore

# Deadline of one store call from the CLI: long enough for a loaded etcd, short enough that an
# unreachable store is reported at once rather than after a TCP timeout.
STORE_TIMEOUT = 3.0
SWITCHOVER_TIMEOUT = 30.0  # longer than the leader's HANDOVER_PATIENCE (core/decide.py)
SETTINGS_RETRIES = 10


@dataclass
class Ctx:
    """What every ctl command works with: the node file (its path, for messages) and (opened on
    demand) its store."""

    cfg: NodeConfig
    path: str = ""
    _store: ClusterStore | None = None

    @property
    def store(self) -> ClusterStore:
        if self._store is None:
            # A client, not a member: in raft mode this host's agent already is one.
            from pgwarden.store.factory import open_tool_store

            self._store = open_tool_store(self.cfg.store, self.cfg.cluster)
        return self._store

    def snapshot(self) -> ClusterView:
        return self.store.snapshot(STORE_TIMEOUT)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


def store_hosts(cfg: StoreConfig) -> str:
    if cfg.etcd is not None:
        return ",".join(cfg.etcd.hosts)
    if cfg.zookeeper is not None:
        return ",".join(cfg.zookeeper.hosts)
    if cfg.raft is not None:
        return ",".join([cfg.raft.self_addr, *cfg.raft.partner_addrs])
    return "?"


def store_what(cfg: StoreConfig) -> str:
    """What to check when the store does not answer, for error messages."""
    if cfg.etcd is not None:
        return "is etcd running?"
    if cfg.zookeeper is not None:
        return "is ZooKeeper running?"
    return "are a majority of the raft members (agents, witness) running?"


def superuser_credentials(cfg: NodeConfig) -> tuple[str, str]:
    su = cfg.postgresql.superuser
    try:
        return su.username, su.secret()
    except ValueError as e:
        raise CliError(str(e)) from None


def update_settings(
    store: ClusterStore, change: Callable[[ClusterSettings], ClusterSettings]
) -> tuple[ClusterSettings, ClusterSettings]:
    """Apply `change` to the store's settings by compare-and-swap, re-reading and re-applying on
    a conflict (an agent or another operator wrote in between). Returns (before, after)."""
    for _ in range(SETTINGS_RETRIES):
        view = store.snapshot(STORE_TIMEOUT)
        new = change(view.settings)
        if new == view.settings:
            return view.settings, new
        # An empty token means the key was never written: create-only.
        if store.set_settings(new, view.settings_token or None, STORE_TIMEOUT):
            return view.settings, new
    raise CliError("the cluster settings kept changing while we tried to write them; try again")


def confirm(question: str, force: bool, what: str) -> None:
    """Ask on a terminal; refuse without --force when nobody can answer (scripts, pipes)."""
    if force:
        return
    if not sys.stdin.isatty():
        raise UsageError(f"refusing to {what} without confirmation (stdin is not a terminal); pass --force")
    try:
        answer = input(f"{question} [y/N] ")
    except EOFError:
        answer = ""
    if answer.strip().lower() not in ("y", "yes"):
        raise CliError("aborted")
