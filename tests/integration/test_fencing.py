"""SAFETY rule 13 end to end: a primary whose agent is frozen (SIGSTOP) stops taking writes by its
lease deadline — the fencer, not the agent, stops it — and exactly one other node takes over.
When the agent thaws it finds another leader and rejoins as a replica."""

from __future__ import annotations

import os
import signal
import time

import psycopg
import pytest

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
