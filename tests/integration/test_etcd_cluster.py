"""End-to-end behaviour of a 3-node cluster on real PostgreSQL and a real etcd: bootstrap,
replication, crash failover and rejoin, switchover/failover commands, pause, and store loss."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import psycopg
import pytest
import yaml

from pgwarden.store.base import StoreError
from pgwarden.store.cluster import ClusterStore
from pgwarden.store.documents import LAYOUT
from pgwarden.store.etcd import EtcdKV
from tests.support.cluster import Cluster, is_writable
from tests.support.wait import wait_for
from tests.support.writer import Writer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with Cluster("etcd") as cl:
        yield cl


def test_bootstrap_gives_one_primary_and_streaming_replicas(cluster: Cluster) -> None:
    primary = cluster.wait_primary()
    replicas = [n for n in cluster.names if n != primary]
    cluster.wait_replicas(replicas)
    for n in replicas:
        st = cluster.status(n)
        assert st is not None and st["upstream"] == primary
    # The leader keeps a physical slot per member.
    slots = {r[0] for r in cluster.sql(primary, "SELECT slot_name FROM pg_replication_slots")}
    assert set(replicas) <= slots


def test_the_local_store_is_authenticated_and_its_secrets_stay_in_files(cluster: Cluster) -> None:
    """Secure by default: `local up` runs etcd with auth on; node files name the store's
    password file (0600) instead of carrying it; etcd refuses a client without credentials."""
    cluster.wait_primary()
    doc = cluster.config("node1")
    auth = doc["store"]["etcd"]["authentication"]
    assert "password" not in auth
    secret = Path(auth["password_file"])
    assert secret.stat().st_mode & 0o077 == 0
    assert secret.read_text().strip() not in yaml.safe_dump(doc)
    hosts = doc["store"]["etcd"]["hosts"]
    plain = ClusterStore(EtcdKV(hosts, doc["cluster"], LAYOUT))
    try:
        with pytest.raises(StoreError, match="authentication enabled"):
            plain.snapshot(2.0)
    finally:
        plain.close()


def test_rows_written_on_the_primary_reach_every_replica(cluster: Cluster) -> None:
    primary = cluster.wait_primary()
    with psycopg.connect(cluster.dsn(), autocommit=True) as c:
        c.execute("CREATE TABLE IF NOT EXISTS t_repl (id int PRIMARY KEY)")
        c.execute("INSERT INTO t_repl SELECT generate_series(1, 100)")
        row = c.execute("SELECT inet_server_port()").fetchone()
    assert row is not None and row[0] == cluster.config(primary)["postgresql"]["port"]
    def has_rows(node: str) -> bool:
        return bool(cluster.sql(node, "SELECT count(*) FROM t_repl")[0][0] == 100)

    for n in cluster.names:
        wait_for(partial(has_rows, n), 30, f"rows on {n}")


def test_crash_of_the_primary_gives_exactly_one_new_primary_and_the_old_one_rejoins(
        cluster: Cluster) -> None:
    old = cluster.wait_primary()
    cluster.wait_replicas([n for n in cluster.names if n != old])
    w = Writer(cluster.dsn(), table="crash_acks")
    w.prepare()
    w.start(max_seconds=90)
    wait_for(lambda: len(w.acks) > 50, 20, "writes flowing")
    cluster.kill_node(old)
    new = cluster.wait_primary(timeout=60, exclude=(old,))
    wait_for(lambda: any(a.server.endswith(str(cluster.config(new)["postgresql"]["port"]))
                         for a in w.acks), 30, "writes on the new primary")
    w.stop()
    assert new != old
    # Once the new primary acknowledged a write, no other server acknowledged one.
    port = str(cluster.config(new)["postgresql"]["port"])
    first_new = next(i for i, a in enumerate(w.acks) if a.server.endswith(port))
    assert {a.server for a in w.acks[first_new:]} == {w.acks[first_new].server}
    assert w.acks[first_new].timeline > w.acks[0].timeline

    cluster.start_node(old)
    cluster.wait_replicas([old], timeout=120)
    new_tl = (cluster.status(new) or {})["timeline"]
    wait_for(lambda: (cluster.status(old) or {}).get("timeline") == new_tl, 30,
             f"{old} streaming on the new primary's timeline {new_tl}")
    assert (cluster.status(old) or {})["upstream"] == new
    log = (cluster.dir / old / "agent.log").read_text()
    assert "pg_rewind" in log or "re-cloning" in log
    assert cluster.primaries() == [new]


def test_switchover_and_failover_commands(cluster: Cluster) -> None:
    leader = cluster.wait_primary()
    others = [n for n in cluster.names if n != leader]
    cluster.wait_replicas(others)
    target = others[0]
    out = cluster.ctl("switchover", "--leader", leader, "--candidate", target, "--force")
    assert target in out.stdout
    assert cluster.wait_primary(timeout=30) == target
    cluster.wait_replicas([n for n in cluster.names if n != target])

    candidate = leader
    cluster.ctl("failover", "--candidate", candidate, "--force")
    assert cluster.wait_primary(timeout=30) == candidate
    cluster.wait_replicas([n for n in cluster.names if n != candidate])

    # The history says why each timeline ended (not PostgreSQL's "no recovery target specified").
    # The module's cluster has been through other promotions before: the last two entries are ours
    # once the new primary has published its history.
    def reasons() -> list[tuple[str, str]] | None:
        rows = json.loads(cluster.ctl("history", "--format", "json").stdout)
        last = [(r["new_leader"], r["reason"]) for r in rows[-2:]]
        return last if [name for name, _ in last] == [target, candidate] else None

    got = wait_for(reasons, 30, "both promotions in the history")
    assert got == [(target, f"switchover from {leader}"), (candidate, "failover by an operator")], got


def test_a_leader_stopped_on_purpose_hands_over_its_key(cluster: Cluster) -> None:
    """`local stop` of the leader: its agent stops PostgreSQL, sees it stopped and releases the
    key (core/shutdown.py), so another member takes over without waiting for the lease."""
    old = cluster.wait_primary()
    cluster.wait_replicas([n for n in cluster.names if n != old])
    cluster.stop_node(old)
    try:
        new = cluster.wait_primary(timeout=30, exclude=(old,))
        log = (cluster.dir / old / "agent.log").read_text()
        assert "releasing the leader key so a replica takes over at once" in log
        assert new != old
    finally:
        cluster.start_node(old)
    cluster.wait_replicas([n for n in cluster.names if n != new], timeout=120)


def test_switchover_to_an_unknown_member_is_a_clear_error(cluster: Cluster) -> None:
    res = cluster.ctl("switchover", "--candidate", "nosuchnode", "--force", check=False)
    assert res.returncode != 0
    assert "nosuchnode" in res.stderr and "node1" in res.stderr
    leader = cluster.wait_primary()
    code, body = cluster.http("POST", leader, "/switchover", {"candidate": "nosuchnode"})
    assert code in (400, 412) and "nosuchnode" in body["error"]
    code, body = cluster.http("POST", leader, "/switchover", b"{not json")
    assert code == 400 and "error" in body
    # `local up` protects the API: without the node file's credentials nothing is even validated.
    code, body = cluster.http("POST", leader, "/switchover", {"candidate": "nosuchnode"}, auth=False)
    assert code == 401 and "credentials" in body["error"]
    assert cluster.http("GET", leader, "/health", auth=False)[0] == 200


def test_pause_prevents_failover_until_resumed(cluster: Cluster) -> None:
    old = cluster.wait_primary()
    cluster.wait_replicas([n for n in cluster.names if n != old])
    cluster.ctl("pause")
    wait_for(lambda: all((cluster.status(n) or {}).get("paused") for n in cluster.names), 15,
             "every member sees the pause")
    cluster.kill_node(old)
    ttl = 4.0
    # Watch for three lease lengths: nobody may take over while paused.
    end = time.monotonic() + 3 * ttl
    while time.monotonic() < end:
        assert cluster.primaries() == [], "a replica took over while the cluster was paused"
        time.sleep(0.2)
    cluster.ctl("resume")
    new = cluster.wait_primary(timeout=30, exclude=(old,))
    assert new != old
    cluster.start_node(old)
    cluster.wait_replicas([old], timeout=120)


def test_losing_the_store_makes_the_primary_read_only_then_it_recovers(cluster: Cluster) -> None:
    leader = cluster.wait_primary()
    cluster.wait_replicas([n for n in cluster.names if n != leader])
    etcd = cluster.etcd_pid()
    os.kill(etcd, signal.SIGSTOP)
    try:
        stopped_at = time.monotonic()
        # Within ttl the primary must stop taking writes.
        wait_for(lambda: is_writable(cluster, leader) is not True, 4.0 + 1.0,
                 "the primary to stop accepting writes")
        assert time.monotonic() - stopped_at <= 5.0
        assert not any(is_writable(cluster, n) for n in cluster.names)
    finally:
        os.kill(etcd, signal.SIGCONT)
    cluster.wait_primary(timeout=60)
    wait_for(lambda: sum(bool(is_writable(cluster, n)) for n in cluster.names) == 1, 30,
             "exactly one writable server again")


def test_replicatefrom_cascades_through_another_replica(cluster: Cluster) -> None:
    leader = cluster.wait_primary()
    first, second = [n for n in cluster.names if n != leader]
    cluster.wait_replicas([first, second])
    path = cluster.dir / second / "pgwarden.yaml"
    original = path.read_text()
    doc = cluster.config(second)
    doc.setdefault("tags", {})["replicatefrom"] = first
    cluster.stop_node(second)
    path.write_text(yaml.safe_dump(doc))
    try:
        cluster.start_node(second)
        wait_for(lambda: (cluster.status(second) or {}).get("upstream") == first, 60,
                 f"{second} streaming from {first}")
        with psycopg.connect(cluster.dsn(), autocommit=True) as c:
            c.execute("CREATE TABLE IF NOT EXISTS t_cascade (id int)")
            c.execute("INSERT INTO t_cascade VALUES (42)")
        wait_for(lambda: cluster.sql(second, "SELECT count(*) FROM t_cascade WHERE id = 42")[0][0] == 1,
                 30, "the row on the cascaded replica")
        slots = {r[0] for r in cluster.sql(first, "SELECT slot_name FROM pg_replication_slots")}
        assert second in slots
    finally:
        cluster.stop_node(second)
        path.write_text(original)
        cluster.start_node(second)
        cluster.wait_replicas([second], timeout=90)
