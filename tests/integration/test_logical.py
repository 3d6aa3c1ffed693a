"""Logical replication between two real HA clusters of different major versions (issue 11, rule 19):
a source on Debian's PostgreSQL 15 and a subscriber on the embedded 18, driven by `ctl logical`.

Selective sharing (row filter, column list, an unpublished table), the reverse direction, bad
input, and the two failovers under a writer with the exact-rows check: after a source failover
the subscriber holds exactly the rows the new source primary holds; after a subscriber failover
its new primary carries on from the replication origin without copying again.
"""

from __future__ import annotations

import json
import os
import pwd
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cluster import Cluster
from tests.support.wait import wait_for
from tests.support.writer import Writer

PG15 = "/usr/lib/postgresql/15/bin"
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not (Path(PG15) / "postgres").exists(),
                       reason=f"needs Debian's PostgreSQL 15 in {PG15} (apt install postgresql-15) "
                              f"beside the embedded 18 for cross-version logical replication"),
]
LOGICAL = ("parameters.wal_level=logical", "parameters.hot_standby_feedback=on")


@pytest.fixture(scope="module")
def src() -> Iterator[Cluster]:
    with Cluster("lsrc", nodes=3, sets=LOGICAL, bin_dir=PG15) as c:
        c.wait_primary()
        c.wait_replicas([n for n in c.names if n not in c.primaries()])
        yield c


@pytest.fixture(scope="module")
def dst() -> Iterator[Cluster]:
    with Cluster("ldst", nodes=2, sets=LOGICAL) as c:
        c.wait_primary()
        yield c


def sql(c: Cluster, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    return c.sql(c.wait_primary(), query, params)


def status(c: Cluster) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(c.ctl("logical", "status", "--format", "json").stdout)
    return doc


def refused(c: Cluster, *args: str, needle: str) -> None:
    r = c.ctl("logical", *args, check=False)
    assert r.returncode != 0, r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], r.stderr


def test_version_pair(src: Cluster, dst: Cluster) -> None:
    assert sql(src, "SHOW server_version_num")[0][0].startswith("15")
    assert sql(dst, "SHOW server_version_num")[0][0].startswith("18")


def test_bad_input_is_refused_in_one_line_and_leaves_nothing_behind(src: Cluster, dst: Cluster) -> None:
    sql(src, "CREATE TABLE IF NOT EXISTS nopk (a int); CREATE TABLE IF NOT EXISTS okpk (id int PRIMARY KEY)")
    refused(src, "publish", "p1", "--tables", "public.nothere", needle="public.nothere does not exist")
    refused(src, "publish", "p1", "--tables", "public.nopk", needle="no primary key")
    refused(src, "publish", "p1", "--tables", "public.okpk", "--where", "public.okpk=nocol = 1",
            needle='column "nocol" does not exist')
    refused(dst, "subscribe", "s1", "--source", "host=127.0.0.1 port=1 user=postgres connect_timeout=2",
            "--publications", "p1", needle="cannot reach the source")
    refused(dst, "subscribe", "s1", "--source", src.dsn(), "--publications", "p1", needle="p1 does not exist")
    assert status(src)["publications"] == []
    assert status(dst)["subscriptions"] == []
    # With --replica-identity full the table without a key is accepted; the name is then taken.
    src.ctl("logical", "publish", "p1", "--tables", "public.nopk", "--replica-identity", "full")
    assert sql(src, "SELECT relreplident FROM pg_class WHERE relname = 'nopk'") == [("f",)]
    refused(src, "publish", "p1", "--tables", "public.okpk", needle="already declared")
    refused(dst, "subscribe", "s1", "--source", src.dsn(), "--publications", "p1",
            needle="does not exist here")  # no --copy-schema and no table
    src.ctl("logical", "drop", "p1")
    assert sql(src, "SELECT count(*) FROM pg_publication") == [(0,)]
    assert sql(dst, "SELECT count(*) FROM pg_subscription") == [(0,)]
    assert sql(src, "SELECT count(*) FROM pg_replication_slots WHERE slot_type = 'logical'") == [(0,)]


def test_selective_from_15_to_18(src: Cluster, dst: Cluster) -> None:
    sql(src, "CREATE TABLE orders (id int PRIMARY KEY, region text, amount int);"
             "CREATE TABLE customers (id int PRIMARY KEY, name text, secret text);"
             "CREATE TABLE private (id int PRIMARY KEY);"
             "INSERT INTO orders SELECT g, CASE WHEN mod(g, 2) = 0 THEN 'eu' ELSE 'us' END, g "
             "FROM generate_series(1, 20) g;"
             "INSERT INTO customers VALUES (1, 'ann', 'x'), (2, 'bob', 'y'); INSERT INTO private VALUES (1)")
    src.ctl("logical", "publish", "orders", "--tables", "public.orders,public.customers",
            "--where", "public.orders=region = 'eu'", "--columns", "public.customers=id,name")
    dst.ctl("logical", "subscribe", "orders_eu", "--source", src.dsn(), "--publications", "orders",
            "--copy-schema")
    sql(src, "INSERT INTO orders VALUES (100, 'eu', 1), (101, 'us', 1); UPDATE customers SET secret = 'z'")
    want = [(i, "eu", i) for i in range(2, 21, 2)] + [(100, "eu", 1)]
    wait_for(lambda: sql(dst, "SELECT * FROM orders ORDER BY id") == want, 60, "the eu orders")
    assert sql(dst, "SELECT * FROM customers ORDER BY id") == [(1, "ann"), (2, "bob")]
    assert sql(dst, "SELECT to_regclass('public.private')") == [(None,)]
    sub = next(s for s in status(dst)["subscriptions"] if s["name"] == "orders_eu")
    assert sub["state"] in ("streaming", "lagging") and sub["source_slot"] == "orders_eu"
    # Every source standby gets a copy of the slot (PostgreSQL 15: copied by the agents).
    wait_for(lambda: next(s for s in status(dst)["subscriptions"] if s["name"] == "orders_eu")
             ["slot_on_candidates"], 60, "the slot on every source standby")
    # ... and every member's /status says so (the members' keys catch up within a loop or two).
    primary = src.wait_primary()

    def reported() -> bool:
        sts = [src.status(n) for n in src.names]
        return all(st is not None and st["logical_slot_copies_missing"] == {} for st in sts) and \
            "orders_eu" in (src.status(primary) or {}).get("logical_slots", {})
    wait_for(reported, 30, "/status: no candidate lacks a copy")
    # The source primary's /metrics has the slot's lag (what the subscriber has yet to confirm).
    code, text = src.http("GET", primary, "/metrics", auth=False)
    assert code == 200 and 'pgwarden_logical_slot_lag_bytes{cluster=' in text and 'slot="orders_eu"' in text


def test_a_passfile_keeps_the_source_password_out_of_the_settings_and_the_catalog(
        src: Cluster, dst: Cluster) -> None:
    sql(src, "CREATE TABLE pf (id int PRIMARY KEY); INSERT INTO pf VALUES (1)")
    src.ctl("logical", "publish", "pf", "--tables", "public.pf")
    password = src.config(src.names[0])["postgresql"]["superuser"]["password"]
    passfile = dst.dir / "source.pgpass"  # read by the subscriber's apply worker, as `postgres`
    passfile.write_text(f"*:*:*:postgres:{password}\n")
    pg = pwd.getpwnam("postgres")
    os.chown(passfile, pg.pw_uid, pg.pw_gid)
    os.chmod(passfile, 0o600)
    source = src.ctl("dsn").stdout.strip().splitlines()[-1] + f"&passfile={passfile}"
    assert password not in source
    dst.ctl("logical", "subscribe", "pf_sub", "--source", source, "--publications", "pf", "--copy-schema")
    sql(src, "INSERT INTO pf VALUES (2)")
    wait_for(lambda: sql(dst, "SELECT id FROM pf ORDER BY id") == [(1,), (2,)], 60,
             "rows through the passfile")
    assert password not in sql(dst, "SELECT subconninfo FROM pg_subscription WHERE subname = 'pf_sub'")[0][0]
    code, body = dst.http("GET", dst.wait_primary(), "/config")
    assert code == 200 and f"passfile={passfile}" in json.dumps(body) and password not in json.dumps(body)
    dst.ctl("logical", "drop", "pf_sub")


def test_all_tables_picks_up_a_later_table_after_refresh(src: Cluster) -> None:
    src.ctl("logical", "publish", "everything", "--all-tables")
    with Cluster("lall", nodes=1, sets=LOGICAL) as every:
        every.wait_primary()
        every.ctl("logical", "subscribe", "every", "--source", src.dsn(), "--publications", "everything",
                  "--copy-schema")
        everything = sql(src, "SELECT * FROM orders ORDER BY id")
        wait_for(lambda: sql(every, "SELECT * FROM orders ORDER BY id") == everything, 60, "all the orders")
        sql(src, "CREATE TABLE later (id int PRIMARY KEY); INSERT INTO later VALUES (1), (2)")
        refused(every, "refresh", "every", needle="add --copy-schema")
        every.ctl("logical", "refresh", "every", "--copy-schema")
        sql(src, "INSERT INTO later VALUES (3)")
        wait_for(lambda: sql(every, "SELECT id FROM later ORDER BY id") == [(1,), (2,), (3,)], 60,
                 "the later table")
        every.ctl("logical", "drop", "every")
    src.ctl("logical", "drop", "everything")
    assert sql(src, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'every'") == [(0,)]


def test_reverse_from_18_to_15(src: Cluster, dst: Cluster) -> None:
    sql(dst, "CREATE TABLE back18 (id int PRIMARY KEY, v text); INSERT INTO back18 VALUES (1, 'a')")
    dst.ctl("logical", "publish", "back", "--tables", "public.back18")
    src.ctl("logical", "subscribe", "back_sub", "--source", dst.dsn(), "--publications", "back",
            "--copy-schema")
    sql(dst, "INSERT INTO back18 VALUES (2, 'b'); UPDATE back18 SET v = 'A' WHERE id = 1")
    wait_for(lambda: sql(src, "SELECT * FROM back18 ORDER BY id") == [(1, "A"), (2, "b")], 60,
             "back18 on the 15 cluster")
    src.ctl("logical", "drop", "back_sub")
    assert sql(dst, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'back_sub'") == [(0,)]


def rows(c: Cluster, node: str) -> list[tuple[Any, ...]]:
    return c.sql(node, "SELECT id, writer FROM acked ORDER BY id")


def settled_equal(src: Cluster, dst: Cluster, src_node: str) -> None:
    """After writes stop: the subscriber's primary holds exactly the rows `src_node` holds."""
    def same() -> bool:
        return rows(src, src_node) == rows(dst, dst.wait_primary())
    try:
        wait_for(same, 90, "the subscriber to hold exactly the source primary's rows", interval=0.5)
    except AssertionError:
        a, b = rows(src, src_node), rows(dst, dst.wait_primary())
        raise AssertionError(f"missing {len(set(a) - set(b))}, extra {len(set(b) - set(a))}, "
                             f"doubled {len(b) - len(set(b))}") from None


def test_source_failover_under_a_writer_keeps_exactly_the_new_primarys_rows(
        src: Cluster, dst: Cluster) -> None:
    w = Writer(src.dsn())
    w.prepare()
    src.ctl("logical", "publish", "acked", "--tables", "public.acked")
    dst.ctl("logical", "subscribe", "acked_sub", "--source", src.dsn(), "--publications", "acked",
            "--copy-schema")
    w.start()
    wait_for(lambda: next(s for s in status(dst)["subscriptions"] if s["name"] == "acked_sub")
             ["slot_on_candidates"], 60, "the slot on every source standby")
    wait_for(lambda: len(rows(dst, dst.wait_primary())) > 200, 30, "rows arriving")
    old = src.wait_primary()
    src.kill_node(old)
    new = src.wait_primary(timeout=60, exclude=(old,))
    port = str(src.config(new)["postgresql"]["port"])
    wait_for(lambda: len(w.acks) > 0 and w.acks[-1].server.endswith(port), 30,
             "the writer on the new primary")
    arrived = len(rows(dst, dst.wait_primary()))
    wait_for(lambda: len(rows(dst, dst.wait_primary())) > arrived + 100, 60,
             "changes from the new source primary arriving")
    w.stop()
    settled_equal(src, dst, new)
    src.start_node(old)
    src.wait_replicas([old])


def test_subscriber_failover_carries_on_from_the_origin_without_copying_again(
        src: Cluster, dst: Cluster) -> None:
    w = Writer(src.dsn(), writer_id=2)
    w.start()
    old = dst.wait_primary()
    dst.wait_replicas([n for n in dst.names if n != old])
    wait_for(lambda: len(w.acks) > 200, 30, "writes")
    dst.kill_node(old)
    new = dst.wait_primary(timeout=60, exclude=(old,))
    progressed = len(w.acks)
    wait_for(lambda: len(w.acks) > progressed + 200, 30, "more writes")
    w.stop()
    settled_equal(src, dst, src.wait_primary())
    # Copying again would have failed on the primary key; the tables stayed "ready" throughout.
    assert dst.sql(new, "SELECT DISTINCT srsubstate FROM pg_subscription_rel") == [("r",)]
    origins = "SELECT count(*) FROM pg_replication_origin_status WHERE remote_lsn > '0/0'"
    assert dst.sql(new, origins)[0][0] >= 1
    dst.start_node(old)
