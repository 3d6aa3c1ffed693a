"""The store the HTTP-layer and executor tests use: the real `ClusterStore` over the in-memory
backend (`tests.support.memkv`), with its `down` switch at hand."""

from __future__ import annotations

from pgwarden.store.cluster import ClusterStore
from tests.support.memkv import MemKV


class MemStore(ClusterStore):
    def __init__(self, cluster: str = "demo") -> None:
        self.mem = MemKV(cluster)
        super().__init__(self.mem)

    @property
    def down(self) -> bool:
        """While True, every call raises StoreUnavailable."""
        return self.mem.down

    @down.setter
    def down(self, value: bool) -> None:
        self.mem.down = value
