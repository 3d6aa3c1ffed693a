"""SAFETY rule 13 end to end: a primary whose agent is frozen (SIGSTOP) stops taking writes by its
lease deadline — the fencer, not the agent, stops it — and exactly one other node takes over.
When the agent thaws it finds another leader and rejoins as a replica."""

from __future__ import annotations

import os
import signal
import time

import psycopg
import pytest

from pgwarden.local.zookeeper import zookeeper_available
from tests.support.cluster import Cluster
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

TTL = 4.0


def test_frozen_agent_primary_is_fenced_before_another_node_promotes() -> None:
    with Cluster("fence") as cl:
        old = cl.wait_primary()
        cl.wait_replicas([n for n in cl.names if n != old])
        agent = cl.agent_pid(old)
        conn = psycopg.connect(cl.conninfo(old), autocommit=True)  # an open session, as an app has
        conn.execute("CREATE TABLE fenced (at float8)")
        os.kill(agent, signal.SIGSTOP)
        frozen_at = time.monotonic()
        try:
            last_ok = frozen_at
            # The session keeps writing until the fencer kills the backend under it.
            while time.monotonic() - frozen_at < TTL + 5:
                try:
                    conn.execute("INSERT INTO fenced VALUES (extract(epoch from now()))")
                    last_ok = time.monotonic()
                except psycopg.Error:
                    break
                time.sleep(0.02)
            assert last_ok - frozen_at <= TTL, "the frozen primary kept taking writes past its lease"
            new = cl.wait_primary(timeout=30, exclude=(old,))
            log = (cl.dir / old / "data.pgwarden" / "fencer.log").read_text()
            assert "fenced postmaster" in log
        finally:
            os.kill(agent, signal.SIGCONT)
            conn.close()
        cl.wait_replicas([old], timeout=120)
        assert cl.primaries() == [new]
        wait_for(lambda: (cl.status(old) or {}).get("upstream") == new, 30, f"{old} following {new}")


@pytest.mark.parametrize("store", ["etcd", "zookeeper", "raft"])
def test_restarted_agent_takes_its_leader_key_back_without_a_failover(store: str) -> None:
    """SAFETY rule 5's exception: an agent SIGKILLed and started again while its PostgreSQL runs
    as the primary and its leader key has not expired renews the key on its first look and keeps
    serving: no demotion, no new timeline, no other leader. (Before the core decided this, a
    primary without the lease demoted first and then promoted itself onto a new timeline; and the
    new agent could not renew a key its previous run's lease held, whatever the backend:
    `KV.renew(adopt=True)`.)"""
    if store == "zookeeper" and not zookeeper_available():
        pytest.skip("no ZooKeeper: install Debian's `zookeeper` package (and java)")
    with Cluster(f"readopt-{store}", sets=("ttl=12",), store=store) as cl:
        old = cl.wait_primary()
        cl.wait_replicas([n for n in cl.names if n != old])
        timeline = _timeline(cl, old)
        os.kill(cl.agent_pid(old), signal.SIGKILL)
        cl.start_node(old)
        wait_for(lambda: (cl.status(old) or {}).get("role") == "primary"
                 and (cl.http("GET", old, "/leader", auth=False)[0] == 200), 60, f"{old} leading again")
        cl.sql(old, "CREATE TABLE after_readopt (id int)")
        assert cl.primaries() == [old]
        assert _timeline(cl, old) == timeline


def _timeline(cl: Cluster, node: str) -> int:
    """The timeline a primary writes on now (pg_control's lags a promotion until a checkpoint)."""
    return int(cl.sql(node, "SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)")[0][0], 16)
