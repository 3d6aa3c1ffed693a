"""Two sites on loopback, each a real local cluster (etcd, agents, PostgreSQL): a standby site
streaming from the primary site, failover inside it, planned site switchover there and back
under a writer, refusals, and a forced promotion after which the old site demotes itself within
ttl (SAFETY rule 18; docs/multi-site.md). The tests run in order on one pair of sites."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from tests.support.cluster import Cluster, pgwarden, reachable_tmpdir
from tests.support.delay_proxy import DelayProxy
from tests.support.ports import free_port
from tests.support.wait import wait_for
from tests.support.writer import Writer

pytestmark = pytest.mark.integration

TTL = 4.0


@dataclass
class Sites:
    a: Cluster
    b: Cluster


@pytest.fixture(scope="module")
def sites() -> Iterator[Sites]:
    with Cluster("sa", nodes=2) as a:
        b = Cluster("sb", nodes=2, standby_of=a.dir)
        with b:
            yield Sites(a, b)


def role(cl: Cluster, node: str) -> str | None:
    st = cl.status(node)
    return None if st is None or st.get("state") != "running" else str(st.get("role"))


def leader_of(cl: Cluster, want: str) -> str:
    def one() -> str | None:
        found = [n for n in cl.names if role(cl, n) == want]
        assert len(found) <= 1, f"two {want}s in {cl.dir}: {found}"
        return found[0] if found else None
    return wait_for(one, 60, f"a {want} in {cl.dir.name}")


def both_sites_dsn(s: Sites) -> str:
    hosts, ports = [], []
    for cl in (s.a, s.b):
        for n in cl.names:
            pg = cl.config(n)["postgresql"]
            hosts.append(pg["listen_address"])
            ports.append(str(pg["port"]))
    su = s.a.config("node1")["postgresql"]["superuser"]
    return (f"host={','.join(hosts)} port={','.join(ports)} user={su['username']} password={su['password']} "
            f"dbname=postgres target_session_attrs=read-write connect_timeout=2")


def arrives(cl: Cluster, node: str, table: str, value: int) -> bool:
    try:
        return bool(cl.sql(node, f"SELECT 1 FROM {table} WHERE x = %s", (value,)))
    except psycopg.Error:
        return False


def one_line_error(proc: object) -> str:
    err = str(getattr(proc, "stderr", "")).strip()
    assert getattr(proc, "returncode", 0) != 0
    assert len(err.splitlines()) == 1, err
    return err


def test_standby_site_streams_from_the_primary_site(sites: Sites) -> None:
    a, b = sites.a, sites.b
    ap = a.wait_primary()
    bl = leader_of(b, "standby_leader")
    code, _ = b.http("GET", bl, "/standby-leader", auth=False)
    assert code == 200
    assert b.http("GET", bl, "/primary", auth=False)[0] == 503
    assert a.http("GET", ap, "/standby-leader", auth=False)[0] == 503
    other = next(n for n in b.names if n != bl)
    wait_for(lambda: (b.status(other) or {}).get("upstream") == bl, 30, f"{other} cascading from {bl}")
    a.sql(ap, "CREATE TABLE IF NOT EXISTS t (x int)")
    a.sql(ap, "INSERT INTO t VALUES (1)")
    for n in b.names:
        wait_for(partial(arrives, b, n, "t", 1), 30, f"the row on {n} of the standby site")
    # The standby leader streams under a site-qualified name: never one of A's members' names.
    names = {r[0] for r in a.sql(ap, "SELECT application_name FROM pg_stat_replication")}
    assert any(x.endswith(f".{bl}") for x in names), names


def test_bad_input_is_one_line_and_changes_nothing(sites: Sites) -> None:
    a, b = sites.a, sites.b
    empty = reachable_tmpdir("nosite")
    target = reachable_tmpdir("c")
    try:
        r = pgwarden("local", "up", "--dir", str(target / "c"), "--nodes", "1", "--standby-of", str(empty),
                     check=False)
        assert "no local cluster there" in one_line_error(r)
        assert not (target / "c").exists() or not any((target / "c").iterdir())
    finally:
        for d in (empty, target):
            shutil.rmtree(d, ignore_errors=True)
    before_b = b.ctl("show-config").stdout
    r = a.ctl("site-switchover", "--to", a.config_path("node1"), check=False)
    assert "is not a standby site of" in one_line_error(r)
    r = b.ctl("demote-cluster", "--source", f"host=127.0.0.1 port={free_port()} user=replicator", check=False)
    assert "cannot reach --source" in one_line_error(r)
    r = b.ctl("promote-cluster", check=False)
    assert "refusing to promote" in one_line_error(r)
    assert "bytes behind" in r.stdout  # the lag report comes first
    assert b.ctl("show-config").stdout == before_b
    a.wait_primary()
    leader_of(b, "standby_leader")


def test_failover_inside_the_standby_site_keeps_a_standby_leader(sites: Sites) -> None:
    a, b = sites.a, sites.b
    old = leader_of(b, "standby_leader")
    b.kill_node(old)
    new = wait_for(lambda: next((n for n in b.names if n != old and role(b, n) == "standby_leader"), None),
                   60, "another standby leader in the standby site")
    ap = a.wait_primary()
    a.sql(ap, "INSERT INTO t VALUES (2)")
    wait_for(lambda: arrives(b, new, "t", 2), 30, "a row from A on the new standby leader")
    assert not b.primaries()
    b.start_node(old)
    wait_for(lambda: role(b, old) == "replica" and arrives(b, old, "t", 2), 90, f"{old} back as a replica")


def test_site_switchover_there_and_back_under_a_writer_loses_nothing(sites: Sites) -> None:
    a, b = sites.a, sites.b
    w = Writer(both_sites_dsn(sites), table="acked_sites")
    w.prepare()
    w.start(max_seconds=120)
    try:
        wait_for(lambda: len(w.acks) > 20, 30, "writes on A")
        r = a.ctl("site-switchover", "--to", b.config_path("node1"))
        assert "is the primary site" in r.stdout, r.stdout
        bp = b.wait_primary()
        leader_of(a, "standby_leader")
        n = len(w.acks)
        b_port = str(b.config(bp)["postgresql"]["port"])
        wait_for(lambda: len(w.acks) > n + 20 and w.acks[-1].server.endswith(b_port), 30, "writes on B")
        r = b.ctl("site-switchover", "--to", a.config_path("node1"))
        ap = a.wait_primary()
        leader_of(b, "standby_leader")
        n = len(w.acks)
        wait_for(lambda: len(w.acks) > n + 20, 30, "writes on A again")
    finally:
        w.stop()
    ports = {x.server.rpartition(":")[2] for x in w.acks}  # inet_server_addr() says 127.0.0.1/32
    assert ports >= {str(a.config(ap)["postgresql"]["port"]), str(b.config(bp)["postgresql"]["port"])}
    assert w.missing_on(a.conninfo(ap)) == []
    last = w.acks[-1].id
    bl = leader_of(b, "standby_leader")
    wait_for(lambda: arrives_id(b, bl, last), 30, "the last row on B's standby leader")
    assert w.missing_on(b.conninfo(bl)) == []


def arrives_id(cl: Cluster, node: str, value: int) -> bool:
    try:
        return bool(cl.sql(node, "SELECT 1 FROM acked_sites WHERE id = %s", (value,)))
    except psycopg.Error:
        return False


def site_source(cl: Cluster) -> str:
    pgs = [cl.config(n)["postgresql"] for n in cl.names]
    return (f"host={','.join(p['listen_address'] for p in pgs)} port={','.join(str(p['port']) for p in pgs)} "
            f"user=replicator dbname=postgres target_session_attrs=read-write")


def test_demote_cluster_then_promote_cluster_by_hand_loses_nothing(sites: Sites) -> None:
    a, b = sites.a, sites.b
    ap = a.wait_primary()
    a.sql(ap, "INSERT INTO t VALUES (10)")
    r = a.ctl("demote-cluster", "--source", site_source(b))
    assert "is a standby site of" in r.stdout, r.stdout
    leader_of(a, "standby_leader")
    assert not a.primaries()
    r = b.ctl("promote-cluster")  # no --force: A was demoted, B first replays all A wrote
    assert "is the primary site" in r.stdout, r.stdout
    bp = b.wait_primary()
    assert arrives(b, bp, "t", 10)
    b.sql(bp, "INSERT INTO t VALUES (11)")
    al = leader_of(a, "standby_leader")
    wait_for(lambda: arrives(a, al, "t", 11), 60, "a row written on B arriving at A")
    b.ctl("site-switchover", "--to", a.config_path("node1"))  # back, for the next test
    a.wait_primary()
    leader_of(b, "standby_leader")


@dataclass
class Prober:
    """Writes straight to every server of a site, recording when each write was acknowledged."""

    cl: Cluster
    acks: list[tuple[str, float]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self._stop.is_set():
            for n in self.cl.names:
                try:
                    with psycopg.connect(self.cl.conninfo(n), autocommit=True) as c:
                        c.execute("INSERT INTO probe VALUES (1)")
                    self.acks.append((n, time.monotonic()))
                except psycopg.Error:
                    pass
            self._stop.wait(0.05)


def forced_promotion_under_a_prober(a: Cluster, b: Cluster) -> tuple[str, str]:
    """`promote-cluster --force` on B while a prober writes straight to every server of A: no
    write on A is accepted later than ttl after the command, and A ends with no primary and a
    standby leader. Returns (the command's output, B's primary)."""
    ap = a.wait_primary()
    a.sql(ap, "CREATE TABLE IF NOT EXISTS probe (x int)")
    bl = leader_of(b, "standby_leader")
    wait_for(lambda: bool(b.sql(bl, "SELECT 1 FROM pg_class WHERE relname = 'probe'")), 30, "probe on B")
    prober = Prober(a)
    t = threading.Thread(target=prober.run, daemon=True)
    t.start()
    try:
        wait_for(lambda: len(prober.acks) > 5, 30, "the prober writing on A")
        r = b.ctl("promote-cluster", "--force")
        done = time.monotonic()
        assert "is the primary site" in r.stdout, r.stdout
        bp = b.wait_primary()
        leader_of(a, "standby_leader")
        # Let the prober try A for a while longer after the deadline.
        wait_for(lambda: time.monotonic() > done + TTL + 3, TTL + 10, "time to pass")
    finally:
        prober._stop.set()
        t.join(10)
    late = [(n, at - done) for n, at in prober.acks if at > done + TTL]
    assert late == [], f"A accepted writes after B's forced promotion + ttl: {late[:5]}"
    assert not a.primaries()
    return r.stdout, bp


def test_forced_promotion_makes_the_old_site_demote_itself_within_ttl(sites: Sites) -> None:
    a, b = sites.a, sites.b
    out, bp = forced_promotion_under_a_prober(a, b)
    assert "forced promotion" in out, out
    # A follows B (pg_rewind over the source DSN, since A wrote past B's promotion point).
    b.sql(bp, "INSERT INTO t VALUES (3)")
    al = leader_of(a, "standby_leader")
    wait_for(lambda: arrives(a, al, "t", 3), 90, "a row written on B arriving at A's standby leader")


def proxied_source(cl: Cluster, proxies: list[DelayProxy]) -> str:
    return (f"host={','.join(p.host for p in proxies)} port={','.join(str(p.port) for p in proxies)} "
            f"user=replicator dbname=postgres target_session_attrs=read-write")


def streams_through(cl: Cluster, proxies: list[DelayProxy]) -> bool:
    """The site's standby leader streams and its primary_conninfo names the proxies (raises what
    it saw if not)."""
    roles = {n: role(cl, n) for n in cl.names}
    node = next((n for n, r in roles.items() if r == "standby_leader"), None)
    assert node is not None, roles
    ci = conninfo_to_dict(str(cl.sql(node, "SHOW primary_conninfo")[0][0]))
    receiver = cl.sql(node, "SELECT status FROM pg_stat_wal_receiver")
    ports = ",".join(str(p.port) for p in proxies)
    assert ci.get("port") == ports and receiver == [("streaming",)], f"{roles}: {node} {ci}, {receiver}"
    return sum(p.stats.open for p in proxies) > 0


def test_site_switchover_with_sources_through_other_addresses(sites: Sites) -> None:
    """Sites that reach each other through other addresses than their members' own (a proxy, NAT):
    the standby site's source names the proxies, site-switchover accepts it as a standby site
    because its standby leader streams from our primary, and `--source` says how the demoted site
    reaches the new primary site."""
    a, b = sites.a, sites.b  # after the forced promotion: B is the primary site, A follows it
    bp = b.wait_primary()
    to_a = [DelayProxy(("127.0.0.1", int(a.config(n)["postgresql"]["port"]))).start() for n in a.names]
    to_b = [DelayProxy(("127.0.0.1", int(b.config(n)["postgresql"]["port"]))).start() for n in b.names]
    try:
        a.ctl("demote-cluster", "--source", proxied_source(b, to_b))
        wait_for(lambda: streams_through(a, to_b), 30, "A's standby leader streaming through the proxies")
        bad = b.ctl("site-switchover", "--to", a.config_path("node1"), "--source",
                    "host=127.0.0.1 port=1 user=replicator", check=False)
        assert "--source does not reach" in one_line_error(bad) and "nothing changed" in bad.stderr
        assert b.primaries() == [bp]
        r = b.ctl("site-switchover", "--to", a.config_path("node1"), "--source", proxied_source(a, to_a))
        assert "is the primary site" in r.stdout, r.stdout
        ap = a.wait_primary()
        bl = leader_of(b, "standby_leader")
        wait_for(lambda: streams_through(b, to_a), 30, "B's standby leader streaming through the proxies")
        a.sql(ap, "INSERT INTO t VALUES (4)")
        wait_for(lambda: arrives(b, bl, "t", 4), 60, "a row written on A arriving at B through the proxies")
    finally:
        for p in (*to_a, *to_b):
            p.close()
