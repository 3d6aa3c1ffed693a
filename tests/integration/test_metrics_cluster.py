"""GET /metrics and GET /decisions on a real 3-node cluster: lag appears while a replica's WAL
receiver is frozen and drains when it runs again; a crash failover flips the roles, counts a
failover on the new primary, and its decision log says why it promoted."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import urllib3
from prometheus_client.parser import text_string_to_metric_families

from tests.support.cluster import Cluster
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
_scope: list[str] = []  # the cluster's name, set by the fixture


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with Cluster("metrics") as cl:
        _scope[:] = [cl.config(cl.names[0])["cluster"]]
        yield cl


def scrape(cluster: Cluster, node: str) -> Samples:
    r = urllib3.request("GET", cluster.api(node) + "/metrics", timeout=2.0, retries=False)
    assert r.status == 200, r.data
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    out: Samples = {}
    for family in text_string_to_metric_families(r.data.decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, metric: str, **labels: str) -> float | None:
    """A sample (pgwarden_* metrics carry the cluster's name as `cluster`), None if absent."""
    if metric.startswith("pgwarden_"):
        labels = {"cluster": _scope[0], **labels}
    return samples.get((metric, frozenset(labels.items())))


def patroni(samples: Samples, metric: str, node: str) -> float | None:
    """A Patroni-named metric: labelled with the cluster's name (scope) and the member's."""
    return value(samples, metric, scope=_scope[0], name=node)


def test_metrics_are_open_and_name_the_roles(cluster: Cluster) -> None:
    primary = cluster.wait_primary()
    replicas = [n for n in cluster.names if n != primary]
    cluster.wait_replicas(replicas)
    s = scrape(cluster, primary)  # no credentials: open like the health checks
    assert value(s, "pgwarden_role", node=primary, role="primary") == 1
    assert patroni(s, "patroni_primary", primary) == 1
    assert patroni(s, "patroni_cluster_unlocked", primary) == 0
    assert (patroni(s, "patroni_xlog_location", primary) or 0) > 0
    assert (value(s, "pgwarden_lease_seconds_left", node=primary) or 0) > 0
    assert value(s, "pgwarden_fencer_armed", node=primary) == 1
    for n in replicas:
        r = scrape(cluster, n)
        assert patroni(r, "patroni_replica", n) == 1
        assert patroni(r, "patroni_primary", n) == 0
        assert (patroni(r, "patroni_xlog_received_location", n) or 0) > 0
        assert value(r, "pgwarden_lease_seconds_left", node=n) == 0
    # /decisions reveals what the agent saw: it needs the credentials when they are configured.
    if cluster.api_auth(primary):
        code, _ = cluster.http("GET", primary, "/decisions", auth=False)
        assert code == 401
    code, body = cluster.http("GET", primary, "/decisions")
    assert code == 200 and body["decisions"], body


def _walreceiver_pid(cluster: Cluster, node: str) -> int | None:
    rows = cluster.sql(node, "SELECT pid FROM pg_stat_wal_receiver")
    return int(rows[0][0]) if rows and rows[0][0] else None


def test_lag_appears_while_a_replica_stalls_and_drains_after(cluster: Cluster) -> None:
    primary = cluster.wait_primary()
    replica = next(n for n in cluster.names if n != primary)
    cluster.wait_replicas([replica])
    pid = wait_for(lambda: _walreceiver_pid(cluster, replica), 30, f"{replica}'s WAL receiver")
    os.kill(pid, signal.SIGSTOP)
    try:
        with psycopg.connect(cluster.dsn(), autocommit=True) as c:
            c.execute("CREATE TABLE IF NOT EXISTS t_lag (v text)")
            c.execute("INSERT INTO t_lag SELECT repeat('x', 1000) FROM generate_series(1, 20000)")

        def lagging() -> float | None:
            s = scrape(cluster, primary)
            lag = value(s, "pgwarden_replication_lag_bytes", node=primary, member=replica) or 0
            secs = value(s, "pgwarden_replication_lag_seconds", node=primary, member=replica) or 0
            return lag if lag > 1_000_000 and secs > 0 else None

        wait_for(lagging, 30, f"{replica} shown behind on {primary}'s /metrics")
    finally:
        os.kill(pid, signal.SIGCONT)

    def drained() -> bool:
        s = scrape(cluster, primary)
        return (value(s, "pgwarden_replication_lag_bytes", node=primary, member=replica) == 0
                and value(s, "pgwarden_replication_lag_seconds", node=primary, member=replica) == 0)

    wait_for(drained, 60, f"{replica}'s lag drained on {primary}'s /metrics")


def test_a_crash_failover_flips_the_roles_and_counts_one_failover(cluster: Cluster) -> None:
    old = cluster.wait_primary()
    cluster.wait_replicas([n for n in cluster.names if n != old])
    before = {n: scrape(cluster, n) for n in cluster.names if n != old}
    cluster.kill_node(old)
    new = cluster.wait_primary(timeout=90, exclude=(old,))

    def flipped() -> Samples | None:
        s = scrape(cluster, new)
        ok = (value(s, "pgwarden_role", node=new, role="primary") == 1
              and patroni(s, "patroni_primary", new) == 1 and patroni(s, "patroni_replica", new) == 0)
        return s if ok else None

    s = wait_for(flipped, 30, f"{new}'s /metrics showing it as the primary")
    was = value(before[new], "pgwarden_failovers_total", node=new) or 0
    assert value(s, "pgwarden_failovers_total", node=new) == was + 1
    assert (patroni(s, "patroni_postgres_timeline", new) or 0) > (
        patroni(before[new], "patroni_postgres_timeline", new) or 0)
    # Its decision log holds the promotion, with the rule and what it saw.
    code, body = cluster.http("GET", new, "/decisions?full=1")
    assert code == 200
    promoted = [d for d in body["decisions"] if any(a["kind"] == "Promote" for a in d["actions"])]
    assert promoted, body["decisions"]
    assert promoted[-1]["rule"].startswith("rule 4")
    assert promoted[-1]["summary"]["leader"] in (None, new)
    assert "observation" in promoted[-1]
    # The old primary comes back as a replica and says so.
    cluster.start_node(old)

    def rejoined() -> bool:
        r = scrape(cluster, old)
        return patroni(r, "patroni_replica", old) == 1 and patroni(r, "patroni_primary", old) == 0

    wait_for(rejoined, 120, f"{old} back as a replica on its /metrics")


def test_ctl_explain_tells_the_failover_and_replay_tries_other_settings(cluster: Cluster,
                                                                         tmp_path: Path) -> None:
    """Runs after the failover above: the merged timeline holds the promotion and why."""
    primary = cluster.wait_primary()
    text = cluster.ctl("explain", "--last", "300").stdout
    promotion = [line for line in text.splitlines() if f" {primary}: " in line and "Promote" in line]
    assert promotion, text
    assert "[rule 4" in promotion[-1]
    assert "saw: " in text
    only = cluster.ctl("explain", "--member", primary, "--last", "300").stdout
    assert all(f" {primary}: " in line for line in only.splitlines() if not line.startswith("    "))
    recorded = tmp_path / "decisions.json"
    recorded.write_text(cluster.ctl("explain", "--format", "json", "--last", "300").stdout)
    body = json.loads(recorded.read_text())
    assert {d["node"] for d in body["decisions"]} == set(cluster.names)
    same = cluster.ctl("replay", str(recorded)).stdout
    assert same.strip().endswith(f"0 of {len(body['decisions'])} decisions differ with the recorded settings")
    paused = cluster.ctl("replay", str(recorded), "--set", "paused=true", "--format", "json").stdout
    diffs = json.loads(paused)["differences"]
    assert any(d["node"] == primary and any(a["kind"] == "Promote" for a in d["recorded"]["actions"])
               and not any(a["kind"] == "Promote" for a in d["replayed"]["actions"]) for d in diffs), diffs
    assert "since" in cluster.ctl("explain", "--since", "yesterday", check=False).stderr
