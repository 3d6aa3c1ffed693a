"""pgwarden on a private network, for the partition rows: the fault suite's namespaced cluster
(`tests.faults.harness.FaultCluster`: etcd on a host of its own, each agent with its PostgreSQL and
REST API on another, this process a client on the same bridge) behind the benchmark's driver
contract. The loopback driver (`bench/drivers/pgwarden.py`) cannot be partitioned."""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.drivers.base import ClusterError, SyncMode, Timing
from bench.drivers.pgwarden import PRESETS, sync_promised
from bench.procs import http_json, wait_for
from pgwarden.api.auth import basic_header
from pgwarden.local.layout import seed_settings
from tests.faults.checker import convergence_problems
from tests.faults.harness import API_PORT, PG_PORT, FaultCluster
from tests.support.netns import Network


@dataclass
class PgwardenNetnsDriver:
    name: str = "pgwarden"
    presets: dict[str, Timing] = field(default_factory=lambda: dict(PRESETS))
    keep: bool = False
    store: str = "etcd"
    sync: SyncMode = "off"
    _net: Network | None = None
    _cluster: FaultCluster | None = None

    def up(self, nodes: int = 3, sync: SyncMode = "off", timing: Timing | None = None) -> None:
        if nodes != 3:
            raise ClusterError("the namespaced layout has exactly 3 nodes")
        timing = timing or self.presets["default"]
        self.sync = sync
        self._net = Network()
        self._net.create()
        cl = FaultCluster(self._net, sync=None if sync == "off" else sync, log=lambda _: None,
                          store=self.store)
        # Timing lives in the store, seeded at bootstrap, as `local up --set` does it.
        cl.settings = seed_settings(cl.sync, [f"ttl={timing.ttl:g}", f"loop_wait={timing.loop_wait:g}",
                                              f"retry_timeout={timing.retry_timeout:g}"])
        cl.ttl = cl.settings.ttl
        self._cluster = cl
        cl.start()
        self.wait_healthy(timeout=120)

    @property
    def cluster(self) -> FaultCluster:
        if self._cluster is None:
            raise ClusterError("the cluster is not up")
        return self._cluster

    def dsn(self) -> str:
        # The same client settings as the Patroni driver's: the workload adds its own.
        cl = self.cluster
        hosts = ",".join(cl.addr(n) for n in cl.names)
        ports = ",".join(str(PG_PORT) for _ in cl.names)
        return f"host={hosts} port={ports} user=postgres password={cl.su_password} dbname=postgres"

    def primary(self) -> str:
        found = self.cluster.primary()
        if found is None:
            raise ClusterError("pgwarden reports no single primary holding the lease")
        return found

    def _healthy(self) -> bool:
        cl = self.cluster
        if convergence_problems(cl.statuses()):
            return False
        leader = cl.primary() if self.sync == "quorum" else None
        standbys = [n for n in cl.names if n != leader]
        return sync_promised((f"http://{cl.addr(n)}:{API_PORT}" for n in cl.names), self.sync, standbys,
                             {"Authorization": basic_header(cl.api_user, cl.api_password)})

    def wait_healthy(self, timeout: float) -> None:
        wait_for(self._healthy, timeout, "pgwarden (netns): one primary and all replicas streaming",
                 interval=0.1)

    def partition_primary(self) -> None:
        """Cut the primary off from the store host and from the other nodes (silent loss both
        ways); the client host still reaches it."""
        leader = self.primary()
        self.cluster.cut_from_store(leader)
        self.cluster.cut_from_peers(leader)

    def kill_primary(self) -> None:
        self.cluster.crash(self.primary())

    def switchover(self, candidate: str | None = None) -> None:
        raise ClusterError("the namespaced driver measures partitions only; use the loopback driver")

    def heal(self) -> None:
        cl = self.cluster
        cl.heal()
        for n in cl.names:
            if not cl.agent_alive(n):
                cl.start_agent(n)

    def leader_changes(self) -> int:
        for n in self.cluster.names:
            history = http_json(f"http://{self.cluster.addr(n)}:{API_PORT}/history", timeout=2.0)
            if isinstance(history, list):
                return len(history)
        raise ClusterError("no pgwarden member answered /history")

    def agent_pids(self) -> list[int]:
        return [p.pid for p in self.cluster.agents.values() if p.poll() is None]

    def down(self) -> None:
        if self._cluster is not None:
            self._cluster.close(keep=self.keep)  # destroys the network too
        elif self._net is not None:
            self._net.destroy()
        self._cluster = self._net = None
