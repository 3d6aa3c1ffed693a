"""Store backends the contract suite runs against, each on a real server (or in memory).

`BACKENDS[name](tmp_dir)` is a context manager: it starts a server under `tmp_dir` and yields
`make_store(cluster) -> ClusterStore` (stores it made are closed on exit). `OPENERS[name](hosts,
cluster)` opens a store on explicit "host:port" addresses (unreachable or multi-host cases).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from pgwarden.store.cluster import ClusterStore
from pgwarden.store.documents import LAYOUT
from pgwarden.store.etcd import EtcdKV
from pgwarden.store.etcd_auth import enable_auth
from tests.support.etcd import EtcdServer
from tests.support.memkv import MemKV, MemServer

StoreFactory = Callable[[str], ClusterStore]
Backend = Callable[[Path], AbstractContextManager[StoreFactory]]
Opener = Callable[[list[str], str], ClusterStore]


@contextmanager
def _stores(open_one: Callable[[str], ClusterStore]) -> Iterator[StoreFactory]:
    made: list[ClusterStore] = []

    def make_store(cluster: str) -> ClusterStore:
        store = open_one(cluster)
        made.append(store)
        return store

    try:
        yield make_store
    finally:
        for store in made:
            store.close()


def open_etcd(hosts: list[str], cluster: str) -> ClusterStore:
    return ClusterStore(EtcdKV(hosts, cluster, LAYOUT))


ETCD_USER = ("pgwarden", "contract-suite-password")


@contextmanager
def etcd_backend(tmp_dir: Path) -> Iterator[StoreFactory]:
    """etcd with authentication on, as `pgwarden local up` runs it: the whole contract (watch,
    leases, transactions) must hold through a prefix-scoped user's token."""
    with EtcdServer(tmp_dir) as server:
        enable_auth([server.endpoint], "contract-suite-root", *ETCD_USER, "/pgwarden", 10.0)

        def open_one(cluster: str) -> ClusterStore:
            server.check_running()
            return ClusterStore(EtcdKV([server.endpoint], cluster, LAYOUT, credentials=ETCD_USER))

        with _stores(open_one) as make:
            yield make


BACKENDS: dict[str, Backend] = {"etcd": etcd_backend}
OPENERS: dict[str, Opener] = {"etcd": open_etcd}


# -- raft: the agents' own group, three members in this process --------------------------------


def open_raft(hosts: list[str], cluster: str) -> ClusterStore:
    """A raft member of its own whose partners are `hosts` (for the unreachable cases)."""
    import tempfile

    from pgwarden.config.schema import RaftConfig
    from pgwarden.store.raft import RaftKV
    from tests.support.ports import free_port

    journal = Path(tempfile.mkdtemp(prefix="pgwarden-raft-"))
    cfg = RaftConfig(self_addr=f"127.0.0.1:{free_port()}", partner_addrs=hosts, data_dir=journal)
    return ClusterStore(RaftKV(cfg, cluster, LAYOUT))


@contextmanager
def raft_backend(tmp_dir: Path) -> Iterator[StoreFactory]:
    from tests.support.raft import RaftGroup

    with RaftGroup(tmp_dir) as group:
        yield group.store


BACKENDS["raft"] = raft_backend
OPENERS["raft"] = open_raft


# -- zookeeper: a standalone server (Debian's package) ------------------------------------------


ZOOKEEPER_USER = ("pgwarden", "contract-suite-password")


def open_zookeeper(hosts: list[str], cluster: str,
                   credentials: tuple[str, str] | None = None) -> ClusterStore:
    from pgwarden.store.zookeeper import ZooKeeperKV

    return ClusterStore(ZooKeeperKV(hosts, cluster, LAYOUT, credentials=credentials))


@contextmanager
def zookeeper_backend(tmp_dir: Path) -> Iterator[StoreFactory]:
    """Every session authenticates (digest) and every node carries that user's ACL."""
    from tests.support.zookeeper import ZooKeeperServer

    with ZooKeeperServer(tmp_dir) as server:
        def open_one(cluster: str) -> ClusterStore:
            server.check_running()
            return open_zookeeper([server.endpoint], cluster, ZOOKEEPER_USER)

        with _stores(open_one) as make:
            yield make


BACKENDS["zookeeper"] = zookeeper_backend
OPENERS["zookeeper"] = open_zookeeper


# -- memory: the tests' own backend, one shared server per session ------------------------------


def open_memory(hosts: list[str], cluster: str) -> ClusterStore:
    """Nothing listens at `hosts`: a store whose every call fails as unreachable."""
    kv = MemKV(cluster)
    kv.down = True
    return ClusterStore(kv)


@contextmanager
def memory_backend(tmp_dir: Path) -> Iterator[StoreFactory]:
    server = MemServer()
    with _stores(lambda c: ClusterStore(MemKV(c, server))) as make:
        yield make


BACKENDS["memory"] = memory_backend
OPENERS["memory"] = open_memory
