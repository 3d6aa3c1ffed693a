"""A real raft group on loopback for tests: N members in this process, each on its own free port,
with its journal under a temporary directory."""

from __future__ import annotations

import itertools
from pathlib import Path
from types import TracebackType

from pgwarden.config.schema import RaftConfig
from pgwarden.store.cluster import ClusterStore
from pgwarden.store.documents import LAYOUT
from pgwarden.store.raft import RaftKV, RaftNode, acquire_node, release_node
from tests.support.ports import free_port
from tests.support.wait import wait_for


class RaftGroup:
    """`with RaftGroup(tmp_dir) as g:` starts `size` members and waits for a raft leader.
    `g.store(cluster)` opens a store (a RaftKV) on the members in turn (so consecutive stores talk to
    different members); `g.stop(i)` stops member i at once, as if its process died."""

    def __init__(self, tmp_dir: Path, size: int = 3) -> None:
        addrs = [f"127.0.0.1:{free_port()}" for _ in range(size)]
        # The group's traffic encrypted with a shared secret, as `pgwarden local up` runs it.
        secret = tmp_dir / "raft.password"
        secret.write_text("raft-group-secret\n")
        secret.chmod(0o600)
        self.configs = [
            RaftConfig(self_addr=a, partner_addrs=[b for b in addrs if b != a], data_dir=tmp_dir / f"raft{i}",
                       password_file=secret)
            for i, a in enumerate(addrs)
        ]
        self.nodes: list[RaftNode] = []
        self._stores: list[ClusterStore] = []
        self._next = itertools.count()

    def __enter__(self) -> RaftGroup:
        try:
            for cfg in self.configs:
                self.nodes.append(acquire_node(cfg))
            self.wait_for_leader()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def wait_for_leader(self, among: list[int] | None = None, timeout: float = 15.0) -> int:
        """Index of the member that is raft leader, once one of `among` (default: all) is."""
        chosen = among if among is not None else list(range(len(self.nodes)))

        def leader() -> int | None:
            for i in chosen:
                if not self.nodes[i].stopped and self.nodes[i].is_leader():
                    return i + 1  # truthy even for member 0
            return None

        return wait_for(leader, timeout, "a raft leader") - 1

    def store(self, cluster: str, member: int | None = None) -> ClusterStore:
        i = member if member is not None else next(self._next) % len(self.configs)
        s = ClusterStore(RaftKV(self.configs[i], cluster, LAYOUT))
        self._stores.append(s)
        return s

    def stop(self, i: int) -> None:
        self.nodes[i].stop()

    def close(self) -> None:
        for s in self._stores:
            s.close()
        self._stores.clear()
        for node in self.nodes:
            release_node(node)
        self.nodes.clear()
