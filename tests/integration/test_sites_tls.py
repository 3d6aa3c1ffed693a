"""Two sites with `local up --tls` (issue 13, docs/multi-site.md): the standby site's certificates
come from the primary site's CA, its stream from the primary site is encrypted and verified, a
planned site switchover moves the primary role across and back over TLS, and after a forced
promotion the old site finds the new primary site over https (rule 18's probe) and demotes itself.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from functools import partial

import pytest

from tests.integration.test_sites import arrives, forced_promotion_under_a_prober, leader_of
from tests.support.cluster import Cluster, pgwarden, reachable_tmpdir
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

def verified_stream(cl: Cluster, node: str) -> bool:
    """The node streams from the other site checking its server against a CA."""
    ci = str(cl.sql(node, "SHOW primary_conninfo")[0][0])
    return "sslmode=verify-full" in ci and "sslrootcert=" in ci


SSL_STANDBYS = "SELECT r.application_name, s.ssl FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid)"


@pytest.fixture(scope="module")
def sites() -> Iterator[tuple[Cluster, Cluster]]:
    with Cluster("ta", nodes=2, tls=True) as a, Cluster("tb", nodes=1, tls=True, standby_of=a.dir) as b:
        yield a, b


def test_standby_site_certificates_come_from_the_primary_sites_ca(sites: tuple[Cluster, Cluster]) -> None:
    a, b = sites
    assert (a.dir / "tls" / "ca.crt").read_bytes() == (b.dir / "tls" / "ca.crt").read_bytes()
    source = b.config("node1")["postgresql"]
    assert source["tls"]["cafile"] == str(b.dir / "tls" / "ca.crt")
    ap = a.wait_primary()
    leader_of(b, "standby_leader")
    a.sql(ap, "CREATE TABLE t (x int)")
    a.sql(ap, "INSERT INTO t VALUES (1)")
    wait_for(partial(arrives, b, "node1", "t", 1), 60, "the row on the standby site")
    rows = a.sql(ap, SSL_STANDBYS)
    assert rows and all(ssl for _, ssl in rows), rows  # every stream into A's primary, B's too
    assert any("." in name for name, _ in rows), rows  # B's standby leader among them
    assert verified_stream(b, "node1")


def test_site_switchover_and_back_over_tls(sites: tuple[Cluster, Cluster]) -> None:
    a, b = sites
    r = a.ctl("site-switchover", "--to", b.config_path("node1"))
    assert "is the primary site" in r.stdout, r.stdout
    bp = b.wait_primary()
    al = leader_of(a, "standby_leader")
    b.sql(bp, "INSERT INTO t VALUES (2)")
    wait_for(partial(arrives, a, al, "t", 2), 60, "a row written on B arriving at A")
    assert verified_stream(a, al)
    rows = b.sql(bp, SSL_STANDBYS)
    assert rows and all(ssl for _, ssl in rows), rows
    b.ctl("site-switchover", "--to", a.config_path("node1"))
    ap = a.wait_primary()
    leader_of(b, "standby_leader")
    a.sql(ap, "INSERT INTO t VALUES (3)")
    wait_for(partial(arrives, b, "node1", "t", 3), 60, "a row written on A again arriving at B")


def test_forced_promotion_is_seen_over_https_and_the_old_site_demotes(sites: tuple[Cluster, Cluster]) -> None:
    a, b = sites
    _, bp = forced_promotion_under_a_prober(a, b)
    b.sql(bp, "INSERT INTO t VALUES (4)")
    al = leader_of(a, "standby_leader")
    wait_for(partial(arrives, a, al, "t", 4), 90, "a row written on B arriving at A's standby leader")
    assert verified_stream(a, al)  # rule 18's source (from GET /site) took this node's TLS settings
    rows = b.sql(bp, SSL_STANDBYS)
    assert rows and all(ssl for _, ssl in rows), rows


def test_a_standby_site_of_a_tls_site_without_tls_is_refused(sites: tuple[Cluster, Cluster]) -> None:
    a, _ = sites
    d = reachable_tmpdir("tc")
    try:
        r = pgwarden("local", "up", "--dir", str(d), "--nodes", "1", "--standby-of", str(a.dir), check=False)
        assert r.returncode != 0
        err = r.stderr.strip().splitlines()
        assert len(err) == 1 and "uses TLS" in err[0] and "--tls" in err[0], r.stderr
        assert [p.name for p in d.iterdir() if not p.name.startswith(".")] == [], "something was created"
    finally:
        shutil.rmtree(d, ignore_errors=True)
