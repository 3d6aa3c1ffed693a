"""HAProxy and PgBouncer in front of a real 3-node cluster: a switchover through PgBouncer cuts
off no transaction, the read-only listener reaches only eligible replicas, and a load through
HAProxy carries on on the new primary after the old one is SIGKILLed
(PgBouncer too)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator

import psycopg
import pytest

from pgwarden.local.haproxy import find_haproxy
from tests.routing.support import Load, RoutingCluster
from tests.support.cluster import pgwarden
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration


def _landed(load: Load, port: int, count: int = 50) -> Callable[[], bool]:
    return lambda: load.ok_on(port) > count


@pytest.fixture(scope="module")
def cluster() -> Iterator[RoutingCluster]:
    cl = RoutingCluster("routing")
    with cl:
        yield cl


def test_generated_config_for_the_live_cluster_is_valid(cluster: RoutingCluster) -> None:
    out = pgwarden("haproxy-config", "-c", cluster.config_path("node1"), "--max-lag", "16MB",
                   "--primary-port", "15000", "--replica-port", "15001").stdout
    for n in cluster.names:
        api = cluster.config(n)["restapi"]["port"]
        assert f"server {n} 127.0.0.1:{cluster.pg_port(n)} maxconn 500 check port {api}" in out
    assert "option httpchk OPTIONS /replica?lag=16MB" in out
    cfg = cluster.dir / "generated.cfg"
    cfg.write_text(out)
    check = subprocess.run([str(find_haproxy()), "-c", "-f", str(cfg)], capture_output=True, text=True,
                           timeout=30)
    assert check.returncode == 0, check.stderr


def test_switchover_through_pgbouncer_fails_no_transaction(cluster: RoutingCluster) -> None:
    old = cluster.wait_primary()
    cluster.wait_replicas([n for n in cluster.names if n != old])
    target = next(n for n in cluster.names if n != old)
    load = Load(cluster.via("pgbouncer"))
    load.prepare()
    load.start(max_seconds=60)
    try:
        wait_for(lambda: load.ok_on(cluster.pg_port(old)) > 50, 20, "transactions on the old primary")
        cluster.ctl("switchover", "--leader", old, "--candidate", target, "--force")
        wait_for(lambda: load.ok_on(cluster.pg_port(target)) > 50, 30, "transactions on the new primary")
    finally:
        load.stop()
    assert load.failures() == [], load.failures()[:5]
    # The switchover shows as one slow transaction (it waited in PgBouncer's queue), not an error.
    assert load.longest() < 2.0, f"longest transaction {load.longest():.2f}s"
    cluster.wait_replicas([n for n in cluster.names if n != target])


def test_read_only_listener_reaches_neither_the_primary_nor_noloadbalance(cluster: RoutingCluster) -> None:
    primary = cluster.wait_primary()
    replicas = [n for n in cluster.names if n != primary]
    tagged, eligible = replicas
    cluster.set_tags(tagged, {"noloadbalance": True})
    cluster.wait_replicas(replicas)

    def settled() -> bool:
        st = cluster.haproxy_states()
        up = {srv for (px, srv), s in st.items() if px == "replicas" and s.startswith("UP")}
        return up == {eligible}
    wait_for(settled, 30, f"HAProxy's read-only pool to be exactly {eligible}")
    dsn = cluster.via("haproxy", replicas=True)
    seen: dict[int, int] = {}
    for _ in range(60):  # new connections: roundrobin would spread them over every server up
        with psycopg.connect(dsn, autocommit=True) as c:
            row = c.execute("SELECT inet_server_port(), pg_is_in_recovery()").fetchone()
        assert row is not None and row[1] is True
        seen[int(row[0])] = seen.get(int(row[0]), 0) + 1
    assert set(seen) == {cluster.pg_port(eligible)}, seen


def test_load_through_haproxy_resumes_on_the_new_primary_after_sigkill(cluster: RoutingCluster) -> None:
    old = cluster.wait_primary()
    cluster.wait_replicas([n for n in cluster.names if n != old])
    # The same crash also exercises PgBouncer's unplanned path: retarget and KILL, then RESUME.
    loads = [Load(cluster.via("haproxy"), table="haproxy_load"), Load(cluster.via("pgbouncer"))]
    for load in loads:
        load.prepare()
        load.start(max_seconds=90)
    try:
        for load in loads:
            wait_for(_landed(load, cluster.pg_port(old)), 20, "transactions on the old primary")
        cluster.kill_node(old)
        new = cluster.wait_primary(timeout=60, exclude=(old,))
        for load in loads:
            wait_for(_landed(load, cluster.pg_port(new)), 30, "transactions on the new primary")
    finally:
        for load in loads:
            load.stop()
    for load in loads:
        first_new = next(i for i, t in enumerate(load.txs) if t.ok and t.server_port == cluster.pg_port(new))
        # Once the new primary took a write, every later success was on it.
        assert {t.server_port for t in load.txs[first_new:] if t.ok} == {cluster.pg_port(new)}
    cluster.start_node(old)
    cluster.wait_replicas([old], timeout=120)
