"""Two sites in network namespaces (each its own store host and nodes on one bridge): the sites
are partitioned, the standby site does not promote by itself, an operator forces its promotion,
and once the link heals the old site's primary demotes itself within ttl (SAFETY rule 18): a
prober writing straight to every server of the old site (from the test's own namespace, which the
partition does not cut off) sees no write accepted later than ttl after the heal."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import psycopg
import pytest

from pgwarden.config.load import replace as replace_settings
from pgwarden.config.schema import EtcdConfig, StoreConfig
from pgwarden.local.layout import NodePlan, new_password, node_config, write_node_config
from pgwarden.store.cluster import ClusterStore
from pgwarden.store.etcd_binary import find_etcd_binary
from pgwarden.store.factory import open_tool_store
from tests.faults.harness import API_PORT, ETCD_CLIENT, ETCD_PEER, PG_PORT, FaultCluster
from tests.support.cluster import pgwarden
from tests.support.netns import Network, unavailable_reason
from tests.support.wait import wait_for

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(unavailable_reason() is not None, reason=str(unavailable_reason()))]


class Site(FaultCluster):
    """A two-node site: hosts `<p>store`, `<p>1`, `<p>2`; a standby site of `source` if given."""

    def __init__(self, net: Network, prefix: str, base: int, source: Site | None = None) -> None:
        super().__init__(net, log=lambda line: print(line, file=sys.stderr))
        self.prefix, self.base, self.source = prefix, base, source
        self.cluster = f"site{prefix}"
        self.names = [f"{prefix}1", f"{prefix}2"]
        self.repl_password: str = source.repl_password if source is not None else new_password()
        if source is not None:  # a physical copy of the source: its roles and passwords
            self.su_password = source.su_password

    def addr(self, host: str) -> str:
        return super().addr(f"{self.prefix}store" if host == "store" else host)

    def source_dsn(self) -> str:
        return (f"host={','.join(self.addr(n) for n in self.names)} port={PG_PORT},{PG_PORT} "
                f"user=replicator dbname=postgres target_session_attrs=read-write")

    def kv(self) -> ClusterStore:
        return open_tool_store(StoreConfig(etcd=EtcdConfig(hosts=[f"{self.addr('store')}:{ETCD_CLIENT}"])),
                               self.cluster)

    def api_urls(self) -> tuple[str, ...]:
        return tuple(f"http://{self.addr(n)}:{API_PORT}" for n in self.names)

    def start(self, timeout: float = 150.0) -> None:
        self.net.add_host(f"{self.prefix}store", self.base)
        for i, n in enumerate(self.names):
            self.net.add_host(n, self.base + 1 + i)
        if "client" not in self.net.hosts:
            self.net.add_root_client("client", 250)
        settings = self.settings
        if self.source is not None:
            settings = replace_settings(settings, standby_cluster={"source": self.source.source_dsn()})
        for n in self.names:
            doc = node_config(self.dir, self.cluster, NodePlan(n, PG_PORT, API_PORT), [], settings,
                              self.su_password, self.repl_password, self.api_password,
                              store={"etcd": {"hosts": [f"{self.addr('store')}:{ETCD_CLIENT}"]}})
            doc["postgresql"]["listen_address"] = self.addr(n)
            doc["restapi"]["listen_address"] = self.addr(n)
            write_node_config(self.config_path(n), doc)
        self.start_store()
        for n in self.names:
            self.start_agent(n)
        want = "standby_leader" if self.source is not None else "primary"
        wait_for(lambda: self.leader(want), timeout, f"a {want} in {self.cluster}", interval=0.25)

    def start_store(self, timeout: float = 30.0) -> None:
        binary = find_etcd_binary()
        assert binary is not None, "no etcd binary"
        a = self.addr("store")
        client, peer = f"http://{a}:{ETCD_CLIENT}", f"http://{a}:{ETCD_PEER}"
        argv = [str(binary), "--name", self.cluster, "--data-dir", str(self.dir / "etcd.data"),
                "--listen-client-urls", client, "--advertise-client-urls", client,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"{self.cluster}={peer}", "--initial-cluster-state", "new",
                "--log-level", "warn"]
        self.store_proc = self.net.popen(f"{self.prefix}store", argv, self.dir / "etcd.log")
        wait_for(self.store_healthy, timeout, f"{self.cluster}'s etcd")

    def leader(self, role: str) -> str | None:
        found = [n for n, s in self.statuses().items()
                 if s is not None and s.get("role") == role and s.get("state") == "running"]
        assert len(found) <= 1, f"two {role}s in {self.cluster}: {found}"
        return found[0] if found else None

    def sql(self, node: str, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.conninfo(node), autocommit=True) as c:
            cur = c.execute(query, params)
            return cur.fetchall() if cur.description else []

    def has_row(self, node: str, value: int) -> bool:
        try:
            return bool(self.sql(node, "SELECT 1 FROM t WHERE x = %s", (value,)))
        except psycopg.Error:
            return False


def link(a: Site, b: Site) -> None:
    """Each site's document names the other's REST APIs (what `local up --standby-of` writes)."""
    for site, other in ((a, b), (b, a)):
        store = site.kv()
        try:
            v = store.snapshot(5)
            assert store.set_site(replace(v.site, peers=other.api_urls()), v.site.token or None, 5)
        finally:
            store.close()


@pytest.fixture
def sites() -> Iterator[tuple[Network, Site, Site]]:
    with Network() as net:
        a = Site(net, "a", 10)
        b = Site(net, "b", 20, source=a)
        try:
            a.start()
            b.start()
            link(a, b)
            yield net, a, b
        finally:
            b.close()
            a.close()


def test_partition_forced_promotion_then_heal(sites: tuple[Network, Site, Site]) -> None:
    net, a, b = sites
    ap = a.leader("primary")
    assert ap is not None
    a.sql(ap, "CREATE TABLE t (x int)")
    a.sql(ap, "INSERT INTO t VALUES (1)")
    bl = wait_for(lambda: b.leader("standby_leader"), 30, "B's standby leader")
    wait_for(lambda: b.has_row(bl, 1), 30, "A's row on B")

    for x in a.names:
        for y in b.names:
            net.cut(x, y)
    # The standby site never promotes by itself, however long it cannot see its source.
    end = time.monotonic() + 3 * a.ttl
    while time.monotonic() < end:
        assert b.leader("primary") is None
        time.sleep(0.25)

    r = pgwarden("ctl", "-c", str(b.config_path(bl)), "promote-cluster", "--force")
    assert "forced promotion" in r.stdout, r.stdout
    bp = wait_for(lambda: b.leader("primary"), 30, "B's primary")
    assert a.leader("primary") == ap  # partitioned: A cannot know yet (what --force accepts)

    acks: list[tuple[str, float]] = []
    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set():
            for n in a.names:
                try:
                    with psycopg.connect(a.conninfo(n), autocommit=True) as c:
                        c.execute("INSERT INTO t VALUES (100)")
                    acks.append((n, time.monotonic()))
                except psycopg.Error:
                    pass
            stop.wait(0.05)

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    try:
        wait_for(lambda: len(acks) > 3, 30, "the prober writing on A")
        healed = time.monotonic()
        net.heal()
        wait_for(lambda: a.leader("standby_leader"), 30, "A demoted to a standby site")
        wait_for(lambda: time.monotonic() > healed + a.ttl + 2, a.ttl + 10, "time to pass")
    finally:
        stop.set()
        prober.join(10)
    late = [(n, round(at - healed, 2)) for n, at in acks if at > healed + a.ttl]
    assert late == [], f"A accepted writes later than ttl after the heal: {late[:5]}"
    b.sql(bp, "INSERT INTO t VALUES (2)")
    al = wait_for(lambda: a.leader("standby_leader"), 30, "A's standby leader")
    wait_for(lambda: a.has_row(al, 2), 90, "a row written on B arriving at A (after pg_rewind)")
