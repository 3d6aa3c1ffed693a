"""The cluster-level failover behaviour on the other coordination backends, through `pgwarden local
up --store ...` with real PostgreSQL: ZooKeeper (one standalone server) and raft (no store process:
the agents, and a witness, are the group). etcd has the same checks in test_etcd_cluster.py.

Raft adds its own promises: two data nodes and a witness survive the loss of any one of the three,
and a primary cut off from the majority of the group stops taking writes within ttl."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from functools import partial

import psycopg
import pytest
import urllib3

from pgwarden.local.zookeeper import zookeeper_available
from tests.support.cluster import Cluster, is_writable
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

# The witness cluster's lease. Losing the witness when it leads the raft group costs an election
# before the next renewal commits; `local up`'s 4 s lease leaves about 1.5 s for it after the
# last renewal, which a loaded 2-core machine (three test workers, fsyncs) sometimes overran:
# the primary then demoted, safely but not what these tests are about. 8 s leaves 5 s.
TTL = 8.0


@pytest.fixture(scope="module", params=["zookeeper", "raft"])
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    store = str(request.param)
    if store == "zookeeper" and not zookeeper_available():
        pytest.skip("no ZooKeeper: install Debian's `zookeeper` package (and java)")
    with Cluster(f"be-{store}", store=store) as cl:
        yield cl


def _rows(cl: Cluster, node: str, table: str) -> int:
    return int(cl.sql(node, f"SELECT count(*) FROM {table}")[0][0])


def test_crash_failover_gives_one_new_primary_and_the_old_one_rejoins(cluster: Cluster) -> None:
    old = cluster.wait_primary()
    cluster.wait_replicas([n for n in cluster.names if n != old])
    # The operator tools reach this backend too (raft: as a non-voting client).
    listed = cluster.ctl("list")
    assert old in listed.stdout and "primary" in listed.stdout
    with psycopg.connect(cluster.dsn(), autocommit=True) as c:
        c.execute("CREATE TABLE IF NOT EXISTS be_rows (id int)")
        c.execute("INSERT INTO be_rows SELECT generate_series(1, 10)")
    # Asynchronous replication: only what the replicas received survives the crash. This test is
    # about the failover, so it crashes the primary once both replicas hold the rows.
    for n in cluster.names:
        if n != old:
            wait_for(partial(lambda m: _rows(cluster, m, "be_rows") == 10, n), 30, f"rows on {n}")

    cluster.kill_node(old)
    new = cluster.wait_primary(timeout=60, exclude=(old,))  # asserts at most one primary per poll
    assert new != old
    with psycopg.connect(cluster.dsn(), autocommit=True) as c:
        c.execute("INSERT INTO be_rows SELECT generate_series(11, 20)")

    cluster.start_node(old)
    cluster.wait_replicas([old], timeout=120)
    new_tl = (cluster.status(new) or {})["timeline"]
    wait_for(lambda: (cluster.status(old) or {}).get("timeline") == new_tl, 30,
             f"{old} on the new primary's timeline {new_tl}")
    wait_for(partial(lambda n: _rows(cluster, n, "be_rows") == 20, old), 30, f"every row on {old}")
    assert cluster.primaries() == [new]


@pytest.fixture(scope="module")
def witness_cluster() -> Iterator[Cluster]:
    with Cluster("be-witness", nodes=2, store="raft", witness=True, sets=(f"ttl={TTL:g}",)) as cl:
        yield cl


def _witness_healthy(cl: Cluster) -> bool:
    port = cl.state()["procs"]["witness"]["ports"]["restapi"]
    try:
        r = urllib3.request("GET", f"http://127.0.0.1:{port}/health", timeout=1.0, retries=False)
    except urllib3.exceptions.HTTPError:
        return False
    return r.status == 200


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def test_two_nodes_and_a_witness_survive_the_loss_of_the_witness(witness_cluster: Cluster) -> None:
    cl = witness_cluster
    primary = cl.wait_primary()
    replica = next(n for n in cl.names if n != primary)
    cl.wait_replicas([replica])
    wait_for(lambda: _witness_healthy(cl), 30, "the witness in a group with a leader")
    _kill(cl.proc_pid("witness"), signal.SIGKILL)
    try:
        # Two of three voters remain: a majority. For longer than a lease nothing may change.
        end = time.monotonic() + TTL + 2.0
        while time.monotonic() < end:
            assert cl.primaries() == [primary], "losing the witness changed the primary"
            # None is "did not answer within connect_timeout" (a loaded machine): ask again, for
            # a bounded time; a demoted or stopped server answers False or never.
            writable = wait_for(lambda: (w := is_writable(cl, primary)) is not None and (w,), 10,
                                f"{primary}'s PostgreSQL to answer")
            assert writable == (True,), f"{primary} stopped taking writes when the witness was lost"
            time.sleep(0.2)
    finally:  # the module's later tests need the witness, whatever happened here
        cl.start_node("witness")
    wait_for(lambda: _witness_healthy(cl), 30, "the witness back in the group")
    assert cl.primaries() == [primary]


def test_a_primary_cut_off_from_the_majority_stops_taking_writes(witness_cluster: Cluster) -> None:
    cl = witness_cluster
    primary = cl.wait_primary()
    replica = next(n for n in cl.names if n != primary)
    cl.wait_replicas([replica])
    # Freezing the other two voters (the replica's agent and the witness) takes the majority
    # away from the primary's raft member while its PostgreSQL and agent keep running.
    frozen = [cl.agent_pid(replica), cl.proc_pid("witness")]
    for pid in frozen:
        _kill(pid, signal.SIGSTOP)
    try:
        cut_at = time.monotonic()
        wait_for(lambda: is_writable(cl, primary) is not True, TTL + 1.0,
                 "the cut-off primary to stop accepting writes")
        assert time.monotonic() - cut_at <= TTL + 1.0
        assert not any(is_writable(cl, n) for n in cl.names)
    finally:
        for pid in frozen:
            _kill(pid, signal.SIGCONT)
    cl.wait_primary(timeout=60)
    wait_for(lambda: sum(bool(is_writable(cl, n)) for n in cl.names) == 1, 30,
             "exactly one writable server again")


def test_two_nodes_and_a_witness_survive_the_loss_of_the_primary(witness_cluster: Cluster) -> None:
    cl = witness_cluster
    old = cl.wait_primary()
    other = next(n for n in cl.names if n != old)
    cl.wait_replicas([other])
    cl.kill_node(old)
    # The surviving data node and the witness are a majority: the survivor takes over.
    assert cl.wait_primary(timeout=60, exclude=(old,)) == other
    cl.start_node(old)
    cl.wait_replicas([old], timeout=120)
    assert cl.primaries() == [other]
