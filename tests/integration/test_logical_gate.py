"""The asynchronous window on PostgreSQL 15, opened on purpose and closed by the logical gate
(SAFETY rule 19; docs/logical-replication.md, "The asynchronous window").

A source on Debian's PostgreSQL 15 in `synchronous_mode: on`, a subscriber on the embedded 18
subscribing through `ctl dsn --logical`. With the walsenders of every standby frozen, a commit
made `synchronous_commit = local` is on the primary alone; its walsender sends it (the server does
not wait for the standbys on 15), and without the gate the subscriber would apply a row that the
failover below loses. Then the source primary's node is killed, a standby (which never got the
row) is promoted, and after the writer stops the subscriber holds exactly the new primary's rows.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgwarden.core.model import lsn_to_int
from tests.integration.test_logical import LOGICAL, PG15, rows, settled_equal, status
from tests.support.cluster import Cluster
from tests.support.wait import wait_for
from tests.support.writer import Writer

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not (Path(PG15) / "postgres").exists(),
                       reason=f"needs Debian's PostgreSQL 15 in {PG15} (apt install postgresql-15): "
                              f"the window exists on 15 and 16 only"),
]
MARKER = 999_999_999_999


@pytest.fixture(scope="module")
def src() -> Iterator[Cluster]:
    # Strict: the frozen standbys stay in the synchronous set (they would be dropped otherwise, and
    # with an empty set no standby may take over: rule 7), so one of them is promoted after the kill.
    with Cluster("gsrc", nodes=3, sync="on", sets=(*LOGICAL, "synchronous_mode_strict=true"),
                 bin_dir=PG15) as c:
        c.wait_primary()
        c.wait_replicas([n for n in c.names if n not in c.primaries()])
        yield c


@pytest.fixture(scope="module")
def dst() -> Iterator[Cluster]:
    # Synchronous too: an 18 source with synchronous standbys for the 15 cluster to subscribe to.
    with Cluster("gdst", nodes=2, sync="on", sets=LOGICAL) as c:
        c.wait_primary()
        yield c


def gated_dsn(src: Cluster) -> str:
    return src.ctl("dsn", "--logical", "--with-password").stdout.strip().splitlines()[-1]


def test_a_direct_subscription_to_a_synchronous_15_source_is_refused(src: Cluster, dst: Cluster) -> None:
    src.sql(src.wait_primary(), "CREATE TABLE IF NOT EXISTS acked (id bigint PRIMARY KEY, writer int)")
    src.ctl("logical", "publish", "acked", "--tables", "public.acked")
    r = dst.ctl("logical", "subscribe", "direct", "--source", src.dsn(), "--publications", "acked",
                "--copy-schema", check=False)
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and len(lines) == 1, r.stderr
    assert "PostgreSQL 15 with synchronous standbys" in lines[0] and "dsn --logical" in lines[0]
    assert dst.sql(dst.wait_primary(), "SELECT count(*) FROM pg_subscription") == [(0,)]
    assert "gdst" not in " ".join(str(r) for r in src.sql(
        src.wait_primary(), "SELECT slot_name FROM pg_replication_slots"))


def test_a_15_subscriber_is_refused_a_direct_subscription_to_a_synchronous_18_source(
        src: Cluster, dst: Cluster) -> None:
    """A subscriber before 17 cannot make a failover slot, and synchronized_standby_slots holds
    back only those: on an 18 source its walsender sends what the standbys lack, as on 15."""
    primary = dst.wait_primary()
    wait_for(lambda: dst.sql(primary, "SHOW synchronous_standby_names")[0][0] not in ("", None), 30,
             "the 18 primary waiting for a synchronous standby")
    dst.sql(primary, "CREATE TABLE IF NOT EXISTS back (id bigint PRIMARY KEY)")
    dst.ctl("logical", "publish", "back", "--tables", "public.back")
    r = src.ctl("logical", "subscribe", "reverse", "--source", dst.dsn(), "--publications", "back",
                "--copy-schema", check=False)
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and len(lines) == 1, r.stderr
    assert "this subscriber runs PostgreSQL 15, which cannot make a failover slot on the PostgreSQL " \
           "18 source" in lines[0] and "dsn --logical" in lines[0], lines[0]
    assert src.sql(src.wait_primary(), "SELECT count(*) FROM pg_subscription") == [(0,)]
    dst.ctl("logical", "drop", "back")


def test_a_commit_on_the_primary_alone_never_reaches_the_subscriber_through_a_failover(
        src: Cluster, dst: Cluster) -> None:
    dsn = gated_dsn(src)
    assert all(str(src.config(n)["postgresql"]["logical_gate_port"]) in dsn for n in src.names)
    w = Writer(src.dsn())
    w.prepare()
    dst.ctl("logical", "subscribe", "gated", "--source", dsn, "--publications", "acked", "--copy-schema")
    w.start()
    wait_for(lambda: next(s for s in status(dst)["subscriptions"] if s["name"] == "gated")
             ["slot_on_candidates"], 60, "the slot on every source standby")
    wait_for(lambda: len(rows(dst, dst.wait_primary())) > 200, 60, "rows arriving through the gate")
    old = src.wait_primary()
    standbys = [n for n in src.names if n != old]
    def promised() -> bool:
        """The store's synchronous set names standbys whose walsenders have been up for a while:
        the slot copies restart the standbys, and a promise read just after that is stale."""
        code, body = src.http("GET", old, "/cluster")
        members = (body.get("sync") or {}).get("members") or [] if code == 200 else []
        settled = src.sql(old, "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming' "
                               "AND application_name = ANY(%s) AND backend_start < now() - interval '3 s'",
                          (members,))
        return bool(members) and settled == [(len(members),)]
    wait_for(promised, 60, "a standby in the store's synchronous set")
    senders = [int(r[0]) for r in src.sql(old, "SELECT pid FROM pg_stat_replication "
                                               "WHERE application_name = ANY(%s)", (standbys,))]
    assert len(senders) == len(standbys)
    for pid in senders:
        os.kill(pid, signal.SIGSTOP)  # no WAL leaves the primary for a standby; commits wait for them
    try:
        src.sql(old, "SET synchronous_commit = local; "
                     f"INSERT INTO acked VALUES ({MARKER}, 99)")
        marker = lsn_to_int(src.sql(old, "SELECT pg_current_wal_flush_lsn()")[0][0]) or 0
        wait_for(lambda: (lsn_to_int(src.sql(old, "SELECT max(sent_lsn) FROM pg_stat_replication "
                                                  "WHERE application_name = 'gated'")[0][0]) or 0) >= marker,
                 30, "the subscription's walsender to send past the local-only commit")
        assert (MARKER, 99) not in rows(dst, dst.wait_primary())
        src.kill_node(old)
    finally:
        for pid in senders:  # the dead primary's walsenders end without sending another byte
            os.kill(pid, signal.SIGKILL)
    new = src.wait_primary(timeout=90, exclude=(old,))
    port = str(src.config(new)["postgresql"]["port"])
    wait_for(lambda: len(w.acks) > 0 and w.acks[-1].server.endswith(port), 60,
             "the writer on the new primary")
    arrived = len(rows(dst, dst.wait_primary()))
    wait_for(lambda: len(rows(dst, dst.wait_primary())) > arrived + 100, 60,
             "changes from the new source primary arriving")
    w.stop()
    assert (MARKER, 99) not in rows(src, new)
    settled_equal(src, dst, new)  # without the gate: the marker, extra, and what it made PG skip
    src.start_node(old)
    src.wait_replicas([old], timeout=120)


def test_strict_mode_without_a_standby_does_not_take_the_subscriber_for_one(src: Cluster) -> None:
    """Rule 8 with a subscriber: with every standby gone, a strict primary must hold each commit
    until a standby has it. Waiting for "*" would let the subscription's walsender (logical, but
    a walsender all the same) acknowledge it; the primary waits for its peers by name instead."""
    primary = src.wait_primary()
    standbys = [n for n in src.names if n != primary]
    before = src.sql(primary, "SHOW synchronous_standby_names")[0][0]
    for n in standbys:
        src.stop_node(n)
    try:
        def settled() -> bool:
            """The store's synchronous set emptied, then the primary's setting moved on."""
            code, body = src.http("GET", primary, "/cluster")
            emptied = code == 200 and not (body.get("sync") or {}).get("members")
            return emptied and src.sql(primary, "SHOW synchronous_standby_names")[0][0] != before
        wait_for(settled, 30, "the leader settled on having no synchronous standby")
        # The stopped peers by name, or a name no member has once their keys are gone; never
        # "*", under which PostgreSQL counts the subscription's walsender as a synchronous one.
        names = str(src.sql(primary, "SHOW synchronous_standby_names")[0][0])
        assert names.startswith("ANY 1 (") and "*" not in names, names
        assert src.sql(primary, "SELECT application_name, sync_state FROM pg_stat_replication") == \
            [("gated", "async")]
        done = threading.Event()
        def commit() -> None:
            src.sql(primary, f"INSERT INTO acked VALUES ({MARKER + 1}, 98)")
            done.set()
        t = threading.Thread(target=commit, daemon=True)
        t.start()
        wait_for(lambda: src.sql(primary, "SELECT count(*) FROM pg_stat_activity "
                                          "WHERE wait_event = 'SyncRep'") == [(1,)], 10,
                 "the commit waiting for a synchronous standby")
        # The subscription keeps streaming all along; nothing it does may release the commit.
        assert not done.wait(3.0), "a strict primary with no standby acknowledged a commit"
    finally:
        for n in standbys:
            src.start_node(n)
    src.wait_replicas(standbys, timeout=120)
    assert done.wait(30), "the commit was not released once a standby had it"
    t.join(5)
