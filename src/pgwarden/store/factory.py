"""Open the store a node's configuration names: a `ClusterStore` over the backend's `KV` (etcd,
ZooKeeper or the agents' own raft group)."""

from __future__ import annotations

import importlib
from typing import cast

from pgwarden.config.errors import ConfigError
from pgwarden.config.schema import Credentials, StoreConfig
from pgwarden.store.base import KV
from pgwarden.store.cluster import ClusterStore
from pgwarden.store.documents import LAYOUT


def open_store(cfg: StoreConfig, cluster: str) -> ClusterStore:
    """The store of `cluster` in the configured backend. Raises ConfigError if it cannot be used."""
    return ClusterStore(open_kv(cfg, cluster))


def _credentials(creds: Credentials | None, where: str) -> tuple[str, str] | None:
    if creds is None:
        return None
    try:
        return creds.username, creds.secret()
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None


def open_kv(cfg: StoreConfig, cluster: str) -> KV:
    """The configured backend's keys of `cluster` (see `open_store`)."""
    if cfg.etcd is not None:
        from pgwarden.store.etcd import EtcdKV

        tls = cfg.etcd.tls
        return EtcdKV(list(cfg.etcd.hosts), cluster, LAYOUT, cfg.etcd.prefix,
                      _credentials(cfg.etcd.authentication, "store.etcd.authentication"),
                      None if tls is None else tls.paths())
    if cfg.zookeeper is not None:
        # Imported lazily: the ZooKeeper backend needs kazoo, an optional extra.
        try:
            module = importlib.import_module("pgwarden.store.zookeeper")
        except ImportError as e:
            if e.name and e.name.split(".")[0] == "kazoo":
                raise ConfigError(
                    "store.zookeeper: the ZooKeeper backend needs kazoo; "
                    "install it with `pip install 'pgwarden[zookeeper]'`"
                ) from None
            raise ConfigError(
                f"store.zookeeper: the ZooKeeper backend is not available in this installation ({e})"
            ) from None
        cls = module.ZooKeeperKV
        creds = _credentials(cfg.zookeeper.authentication, "store.zookeeper.authentication")
        return cast(KV, cls(list(cfg.zookeeper.hosts), cluster, LAYOUT, cfg.zookeeper.prefix, creds))
    if cfg.raft is not None:
        # Lazily: pysyncobj is only needed by the raft mode.
        from pgwarden.store.raft import RaftKV

        if cfg.raft.data_dir is None:
            # Raft's term and vote must survive a restart: a member restarted mid-election with
            # an empty memory can vote twice in one term, and two leaders of one term can each
            # grant the leader key (safety review).
            raise ConfigError(
                "store.raft.data_dir: required for an agent or witness (Raft's term and vote must "
                "survive a restart, or a restarted member can vote twice); set it to a directory "
                "on this host"
            )
        return RaftKV(cfg.raft, cluster, LAYOUT)
    raise ConfigError("store: choose exactly one store backend: etcd, zookeeper or raft")


def open_tool_store(cfg: StoreConfig, cluster: str) -> ClusterStore:
    """The store for tools that run beside an agent (`ctl`, `node`, `local status`): the same as
    `open_store`, except in raft mode, where opening a member would start a second voter on the
    agent's own address; there it is a non-voting client of the group."""
    if cfg.raft is not None:
        from pgwarden.store.raft import open_client

        return ClusterStore(open_client(cfg.raft, cluster, LAYOUT))
    return open_store(cfg, cluster)
