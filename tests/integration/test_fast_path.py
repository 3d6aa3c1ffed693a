"""The confirmed-crash fast path (SAFETY rule 16) must not fire when the old primary could still
acknowledge: each case here leaves a postmaster alive and listening while its agent is gone or
frozen, and the new primary must come only from the lease running out, with no acknowledged
commit lost. (The case that must fire, a whole node SIGKILLed, is in test_sync_mode.py.)"""

from __future__ import annotations

import os
import signal
import time

import psycopg
import pytest

from tests.integration.test_sync_mode import promotion_reason
from tests.support.cluster import Cluster, is_writable
from tests.support.wait import wait_for
from tests.support.writer import Writer

pytestmark = pytest.mark.integration


def _one_writable(cl: Cluster, seconds: float) -> None:
    """Never two writable primaries while the failover runs (sampled every 50 ms)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        writable = [n for n in cl.names if is_writable(cl, n)]
        assert len(writable) <= 1, f"two writable primaries: {writable}"
        time.sleep(0.05)


def _watch_failover(cl: Cluster, old: str) -> str:
    """Sample every 50 ms until another node is writable, and 2 s beyond: never two at once."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        writable = [n for n in cl.names if is_writable(cl, n)]
        assert len(writable) <= 1, f"two writable primaries: {writable}"
        if writable and writable[0] != old:
            _one_writable(cl, 2.0)
            return writable[0]
        time.sleep(0.05)
    raise AssertionError(f"no node took over from {old} within 60 s")


def _promised(cl: Cluster, leader: str) -> bool:
    """The store's synchronous record is `leader`'s and names a standby (rule 6: until then only
    the leader has every acknowledged commit, and no one may take over, fast path or not)."""
    code, body = cl.http("GET", leader, "/cluster")
    sync = (body.get("sync") or {}) if code == 200 else {}
    return sync.get("leader") == leader and bool(sync.get("members"))


def _backend_pid(cl: Cluster, node: str) -> tuple[psycopg.Connection[tuple[object, ...]], int]:
    conn = psycopg.connect(cl.conninfo(node), autocommit=True)
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    return conn, int(row[0])


def test_a_live_postmaster_is_never_taken_over_early() -> None:
    with Cluster("fastpath-no", sync="on") as cl:
        old = cl.wait_primary()
        cl.wait_replicas([n for n in cl.names if n != old])
        wait_for(lambda: _promised(cl, old), 30, "a synchronous standby in the store")
        wait_for(lambda: cl.sql(old, "SHOW synchronous_standby_names")[0][0] not in ("", None), 30,
                 "the primary waiting for its synchronous standby")
        writer = Writer(cl.dsn(), table="fp_acks", writer_id=0)
        writer.prepare()
        writer.start(max_seconds=120)
        wait_for(lambda: len(writer.acks) > 30, 20, "writes flowing")

        # 1. A frozen agent beside a live postmaster: its REST port still completes handshakes
        #    (the kernel answers for a stopped process) and PostgreSQL listens. Wait for the lease.
        agent = cl.agent_pid(old)
        os.kill(agent, signal.SIGSTOP)
        try:
            new = _watch_failover(cl, old)
            reason = promotion_reason(cl, new)
            assert "fast path" not in reason and "lease ran out" in reason, reason
        finally:
            os.kill(agent, signal.SIGCONT)
        cl.wait_replicas([old], timeout=120)

        # 2. The agent SIGKILLed while a backend crash makes the postmaster reinitialise: it keeps
        #    its listening socket through the crash restart, so its node is not "refused" while it
        #    runs. Only the fencer, at the lease deadline, leaves nothing listening there; from then
        #    on a take-over may be early (the store's key outlives the deadline by the margin).
        wait_for(lambda: _promised(cl, new), 30, "the new primary's synchronous standby in the store")
        wait_for(lambda: cl.sql(new, "SHOW synchronous_standby_names")[0][0] not in ("", None), 30,
                 "the new primary waiting for a synchronous standby")
        conn, backend = _backend_pid(cl, new)
        os.kill(cl.agent_pid(new), signal.SIGKILL)
        os.kill(backend, signal.SIGKILL)
        conn.close()
        third = _watch_failover(cl, new)
        reason = promotion_reason(cl, third)
        if "fast path" in reason:
            fenced = (cl.dir / new / "data.pgwarden" / "fencer.log").read_text()
            assert "fenced postmaster" in fenced, f"taken over early while {new}'s postmaster ran: {reason}"
        else:
            assert "lease ran out" in reason, reason

        third_port = str(cl.config(third)["postgresql"]["port"])
        wait_for(lambda: any(a.server.endswith(third_port) for a in writer.acks), 30,
                 "writes acknowledged by the third primary")
        writer.stop()
        missing = writer.missing_on(cl.conninfo(third))
        assert missing == [], f"{len(missing)} acknowledged commits lost: {missing[:10]}"
