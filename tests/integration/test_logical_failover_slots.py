"""PostgreSQL 17+ failover slots (issue 11, rule 19): a source cluster on 18 keeps the
subscription's slot on its standbys through PostgreSQL's own slot synchronisation, managed by the
agents (sync_replication_slots and hot_standby_feedback on standbys, synchronized_standby_slots
on the primary). After the source primary is SIGKILLed under a writer, the subscriber holds
exactly the rows the new source primary holds, with the source in synchronous_mode on and in
asynchronous mode: synchronized_standby_slots closes the window in both
(docs/logical-replication.md, "The asynchronous window")."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.test_logical import LOGICAL, rows, settled_equal, status
from tests.support.cluster import Cluster
from tests.support.wait import wait_for
from tests.support.writer import Writer

pytestmark = pytest.mark.integration
SYNCED = "SELECT synced FROM pg_replication_slots WHERE slot_name = 'acked_sub' AND NOT temporary"


@pytest.fixture(scope="module", params=["on", None], ids=["sync-on", "async"])
def src(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    # One source at a time: pytest ends the synchronous one before it starts the asynchronous one.
    with Cluster("fsrc", nodes=3, sync=request.param, sets=LOGICAL) as c:
        c.wait_primary()
        yield c


@pytest.fixture(scope="module")
def dst(src: Cluster) -> Iterator[Cluster]:
    # A fresh subscriber for each source: every run declares the same names.
    with Cluster("fdst", nodes=1, sets=LOGICAL) as c:
        c.wait_primary()
        yield c


def test_source_failover_on_18_with_failover_slots(src: Cluster, dst: Cluster) -> None:
    primary = src.wait_primary()
    src.wait_replicas([n for n in src.names if n != primary])
    # The mode under test is in force: a synchronous standby named only in synchronous_mode.
    sync_names = "SHOW synchronous_standby_names"
    if src.sync == "on":
        wait_for(lambda: src.sql(primary, sync_names)[0][0] != "", 30, "a synchronous standby")
    else:
        assert src.sql(primary, sync_names) == [("",)]
    w = Writer(src.dsn())
    w.prepare()
    src.ctl("logical", "publish", "acked", "--tables", "public.acked")
    dst.ctl("logical", "subscribe", "acked_sub", "--source", src.dsn(), "--publications", "acked",
            "--copy-schema")
    failover = "SELECT failover FROM pg_replication_slots WHERE slot_name = 'acked_sub'"
    assert src.sql(primary, failover) == [(True,)]
    w.start()
    # The slot-sync worker keeps the slot on both standbys (persistent only once the primary's
    # slot has moved past what the standby can hold: up to a running-xacts record, ~15 s), and
    # the primary waits for them.
    wait_for(lambda: all(src.sql(n, SYNCED) == [(True,)] for n in src.names if n != primary), 90,
             "synced slots on standbys")
    # The leader names the streaming candidates' slots from its next loop after it sees a failover
    # slot (a busy machine may take a few).
    wanted = sorted(n for n in src.names if n != primary)
    wait_for(lambda: sorted(src.sql(primary, "SHOW synchronized_standby_slots")[0][0].split(",")) == wanted,
             30, f"synchronized_standby_slots naming {wanted}")
    wait_for(lambda: next(s for s in status(dst)["subscriptions"] if s["name"] == "acked_sub")
             ["slot_on_candidates"], 30, "the slot on every source standby")
    wait_for(lambda: len(rows(dst, dst.wait_primary())) > 200, 30, "rows arriving")
    src.kill_node(primary)
    new = src.wait_primary(timeout=60, exclude=(primary,))
    arrived = len(rows(dst, dst.wait_primary()))
    wait_for(lambda: len(rows(dst, dst.wait_primary())) > arrived + 100, 60,
             "changes from the new source primary arriving")
    w.stop()
    settled_equal(src, dst, new)
    # The old primary comes back as a standby and ends up with a synced copy of the new primary's
    # slot (had it kept its own failover slot, synced = false, the agent would drop it).
    src.start_node(primary)
    src.wait_replicas([primary])
    wait_for(lambda: src.sql(primary, SYNCED) == [(True,)], 90,
             "the old primary's slot replaced by a synced one")
