"""Store backends the contract suite runs against, each on a real server.

`BACKENDS[name](tmp_dir)` is a context manager: it starts a server under `tmp_dir` and yields
`make_store(cluster) -> Store` (stores it made are closed on exit). `OPENERS[name](hosts, cluster)`
opens a store on explicit "host:port" addresses (unreachable or multi-host cases).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from pgwarden.store.base import Store
from pgwarden.store.etcd import EtcdStore
from tests.support.etcd import EtcdServer

StoreFactory = Callable[[str], Store]
Backend = Callable[[Path], AbstractContextManager[StoreFactory]]
Opener = Callable[[list[str], str], Store]


@contextmanager
def _stores(open_one: Callable[[str], Store]) -> Iterator[StoreFactory]:
    made: list[Store] = []

    def make_store(cluster: str) -> Store:
        store = open_one(cluster)
        made.append(store)
        return store

    try:
        yield make_store
    finally:
        for store in made:
            store.close()


def open_etcd(hosts: list[str], cluster: str) -> Store:
    return EtcdStore(hosts, cluster)


@contextmanager
def etcd_backend(tmp_dir: Path) -> Iterator[StoreFactory]:
    with EtcdServer(tmp_dir) as server, _stores(lambda c: open_etcd([server.endpoint], c)) as make:
        yield make


BACKENDS: dict[str, Backend] = {"etcd": etcd_backend}
OPENERS: dict[str, Opener] = {"etcd": open_etcd}
