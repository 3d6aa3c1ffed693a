"""HAProxy and PgBouncer in front of a `local up --tls` cluster: HAProxy's health checks speak
https and verify the members against the CA, clients reach the primary through either proxy on
verify-full, and after a switchover PgBouncer (which reaches PostgreSQL on verify-full itself) sends
them to the new primary."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.routing.support import RoutingCluster
from tests.support.cluster import pgwarden
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration


class TlsRoutingCluster(RoutingCluster):
    def up(self) -> None:
        pgwarden("local", "up", "--nodes", str(self.nodes), "--dir", str(self.dir),
                 "--haproxy", "--pgbouncer", "--tls")


@pytest.fixture(scope="module")
def cluster() -> Iterator[TlsRoutingCluster]:
    cl = TlsRoutingCluster("routing-tls", tls=True)
    with cl:
        yield cl


def where(dsn: str) -> tuple[Any, ...]:
    with psycopg.connect(dsn, autocommit=True) as c:
        assert c.pgconn.ssl_in_use
        row = c.execute("SELECT inet_server_port(), pg_is_in_recovery()").fetchone()
    assert row is not None
    return tuple(row)


def test_haproxy_checks_over_https_and_both_proxies_on_verify_full(cluster: TlsRoutingCluster) -> None:
    primary = cluster.wait_primary()
    cluster.wait_replicas([n for n in cluster.names if n != primary])
    cfg = (cluster.dir / "haproxy" / "haproxy.cfg").read_text()
    assert cfg.count(f"check-ssl verify required ca-file {cluster.ca()}") == 2 * len(cluster.names)
    wait_for(lambda: [s for (p, s), st in cluster.haproxy_states().items() if p == "primary" and st == "UP"]
             == [primary], 20, "HAProxy's https checks marking only the primary up")
    for via in ("haproxy", "pgbouncer"):
        dsn = cluster.via(via)
        assert f"sslmode=verify-full&sslrootcert={cluster.ca()}" in dsn
        assert where(dsn) == (cluster.pg_port(primary), False)


def test_pgbouncer_follows_a_switchover(cluster: TlsRoutingCluster) -> None:
    old = cluster.wait_primary()
    cluster.wait_replicas([n for n in cluster.names if n != old])
    target = next(n for n in cluster.names if n != old)
    cluster.ctl("switchover", "--leader", old, "--candidate", target, "--force")
    assert cluster.wait_primary(timeout=30) == target
    dsn = cluster.via("pgbouncer")
    wait_for(lambda: where(dsn) == (cluster.pg_port(target), False), 30, "PgBouncer on the new primary")
