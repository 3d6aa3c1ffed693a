"""A local cluster's directory, state file and store: what its components and the status report
read of it. LocalCluster (cluster.py) adds starting and stopping on top."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from pgwarden.config.load import load_node_config
from pgwarden.config.schema import Credentials, EtcdConfig, NodeConfig, StoreConfig
from pgwarden.core.model import ClusterView
from pgwarden.errors import CliError
from pgwarden.local import procs
from pgwarden.local.layout import ProcRecord, State, load_state, require_state, save_state
from pgwarden.local.store_secrets import store_authentication
from pgwarden.store.base import StoreUnavailable
from pgwarden.store.cluster import ClusterStore

STORE_TIMEOUT = 2.0
# Kinds of the processes that are the store itself (raft mode has none).
STORE_KINDS = ("etcd", "zookeeper")
WITNESS = "witness"

Out = Callable[[str], None]


def _stderr(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


class ClusterHandle:
    """The local cluster in `directory` as recorded there: its state, its processes and its store."""

    def __init__(self, directory: Path | str, out: Out = _stderr) -> None:
        self.directory = Path(os.path.abspath(directory))
        self.out = out
        self._store: ClusterStore | None = None
        self._view: tuple[float, ClusterView | None] | None = None
        self.state: State | None = load_state(self.directory) if self.directory.is_dir() else None

    # -- store access ----------------------------------------------------------------------------
    def store(self) -> ClusterStore | None:
        """The cluster's store: etcd from the state file; ZooKeeper or raft as the node files say
        (raft through a non-voting client, as `ctl` does: never a second member)."""
        if self._store is None and self.state is not None:
            from pgwarden.store.factory import open_tool_store

            cfg = self._store_config()
            if cfg is None:
                return None
            try:
                self._store = open_tool_store(cfg, self.state.cluster)
            except StoreUnavailable:
                return None
        return self._store

    def _store_config(self) -> StoreConfig | None:
        state = self.current_state()
        if state.etcd_hosts():
            for rec in state.agents():  # an etcd on https: with a node's CA and certificate
                cfg = node_file(rec)
                if cfg is not None and cfg.store.etcd is not None and cfg.store.etcd.tls is not None:
                    return cfg.store
            auth = store_authentication(self.directory)
            creds = None if auth is None else Credentials(username=auth["username"],
                                                          password_file=Path(auth["password_file"]))
            return StoreConfig(etcd=EtcdConfig(hosts=state.etcd_hosts(), authentication=creds))
        for rec in state.agents():
            cfg = node_file(rec)
            if cfg is not None:
                return cfg.store
        return None

    def store_kind(self) -> str:
        """etcd, zookeeper or raft: recorded as the store's process, raft when there is none."""
        procs_ = self.current_state().procs
        for kind in STORE_KINDS:
            if any(r.kind == kind for r in procs_.values()):
                return kind
        return "raft" if procs_ else "etcd"

    def store_process(self) -> ProcRecord | None:
        return next((r for r in self.current_state().procs.values() if r.kind in STORE_KINDS), None)

    def store_reachable_maybe(self) -> bool:
        """Whether asking the store is worth it: its process runs, or (raft) some member does."""
        rec = self.store_process()
        if rec is not None:
            return procs.is_ours(rec.pid, rec.marker)
        return any(procs.is_ours(r.pid, r.marker) for r in self.current_state().procs.values()
                   if r.kind in ("agent", WITNESS))

    def view(self, max_age: float = 0.2) -> ClusterView | None:
        """A store snapshot, reused for `max_age` s so readiness checks of N agents cost one read."""
        now = time.monotonic()
        if self._view is not None and now - self._view[0] < max_age:
            return self._view[1]
        store = self.store()
        view: ClusterView | None = None
        if store is not None:
            try:
                view = store.snapshot(STORE_TIMEOUT)
            except StoreUnavailable:
                view = None
        self._view = (now, view)
        return view

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    # -- recorded state --------------------------------------------------------------------------
    def current_state(self) -> State:
        if self.state is None:
            self.state = require_state(self.directory)
        return self.state

    def running(self) -> list[ProcRecord]:
        return [r for r in self.current_state().procs.values() if procs.is_ours(r.pid, r.marker)]

    def record(self, name: str) -> ProcRecord:
        state = self.current_state()
        if name not in state.procs:
            raise CliError(f"no node or component named '{name}' in {self.directory} "
                           f"(known: {', '.join(state.procs)})")
        return state.procs[name]

    def _save(self) -> None:
        save_state(self.directory, self.current_state())


def node_file(rec: ProcRecord) -> NodeConfig | None:
    if rec.config is None:
        return None
    try:
        return load_node_config(rec.config)
    except Exception:  # status must work even with a damaged node file
        return None
