"""The /metrics collector over hand-built states: pgwarden_* and Patroni's names, parsed back with
prometheus_client's own text parser."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from pgwarden.api.metrics import patroni_version, render
from pgwarden.api.state import NodeState
from pgwarden.api.telemetry import Facts, Telemetry
from pgwarden.config.schema import SyncMode
from pgwarden.core.actions import Decision, Promote, RenewLease
from pgwarden.core.model import DataState, FailoverRequest, Lease, Me, Observation, PgView, Tags
from tests.api.factory import CAUGHT_UP, LAGGING, LEADER_LSN, MB, PRIMARY, view

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(state: NodeState | None, telemetry: Telemetry | None = None, node: str = "node1") -> Samples:
    text = render(state, telemetry, node, "demo").decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def get(samples: Samples, metric: str, **labels: str) -> float:
    """A sample; pgwarden_* metrics carry the cluster's name (here "demo") as `cluster`."""
    if metric.startswith("pgwarden_"):
        labels = {"cluster": "demo", **labels}
    return samples[(metric, frozenset(labels.items()))]


def state(member: object = PRIMARY, holds: bool = True, **kw: object) -> NodeState:
    return NodeState(member=member, cluster=kw.pop("cluster", view()), store_ok=True,  # type: ignore[arg-type]
                     holds_lease=holds, last_loop_at=0.0, started_at=0.0)


def test_the_leader_shows_its_role_and_position_in_both_names() -> None:
    s = scrape(state())
    assert get(s, "pgwarden_role", node="node1", role="primary") == 1
    assert get(s, "pgwarden_role", node="node1", role="replica") == 0
    assert get(s, "pgwarden_holds_lease", node="node1") == 1
    assert get(s, "patroni_primary", scope="demo", name="node1") == 1
    assert get(s, "patroni_replica", scope="demo", name="node1") == 0
    assert get(s, "patroni_xlog_location", scope="demo", name="node1") == LEADER_LSN
    assert get(s, "patroni_xlog_received_location", scope="demo", name="node1") == 0
    assert get(s, "patroni_cluster_unlocked", scope="demo", name="node1") == 0
    assert get(s, "patroni_postgres_timeline", scope="demo", name="node1") == 1
    assert get(s, "patroni_postgres_running", scope="demo", name="node1") == 1
    assert get(s, "patroni_postgres_state", scope="demo", name="node1") == 5


def test_lag_per_member_from_the_store_snapshot() -> None:
    s = scrape(state())
    assert get(s, "pgwarden_replication_lag_bytes", node="node1", member="node1") == 0
    assert get(s, "pgwarden_replication_lag_bytes", node="node1", member="node2") == 0
    assert get(s, "pgwarden_replication_lag_bytes", node="node1", member="node3") == 64 * MB


def test_logical_slot_lag_per_slot_only_where_slots_exist() -> None:
    slots = (("orders_eu", LEADER_LSN - 3 * MB), ("ahead", LEADER_LSN + 1))
    with_slots = replace(PRIMARY, logical_slots=slots)
    s = scrape(state(with_slots))
    assert get(s, "pgwarden_logical_slot_lag_bytes", node="node1", slot="orders_eu") == 3 * MB
    assert get(s, "pgwarden_logical_slot_lag_bytes", node="node1", slot="ahead") == 0
    assert not any(name == "pgwarden_logical_slot_lag_bytes" for name, _ in scrape(state()))


def test_a_replica_reports_received_and_replayed_and_sync_membership() -> None:
    cluster = view(mode=SyncMode.ON, sync_members=["node2"], paused=True)
    s = scrape(state(CAUGHT_UP, holds=False, cluster=cluster), node="node2")
    assert get(s, "patroni_replica", scope="demo", name="node2") == 1
    assert get(s, "patroni_primary", scope="demo", name="node2") == 0
    assert get(s, "patroni_xlog_location", scope="demo", name="node2") == 0
    assert get(s, "patroni_xlog_received_location", scope="demo", name="node2") == LEADER_LSN
    assert get(s, "patroni_xlog_replayed_location", scope="demo", name="node2") == LEADER_LSN - 0x60
    assert get(s, "patroni_sync_standby", scope="demo", name="node2") == 1
    assert get(s, "patroni_is_paused", scope="demo", name="node2") == 1
    assert get(s, "pgwarden_synchronous_set_size", node="node2") == 1


def test_no_leader_is_an_unlocked_cluster() -> None:
    s = scrape(state(LAGGING, holds=False, cluster=view(leader=None)), node="node3")
    assert get(s, "patroni_cluster_unlocked", scope="demo", name="node3") == 1
    assert get(s, "pgwarden_cluster_has_leader", node="node3") == 0


def test_before_the_first_loop_only_the_agent_itself() -> None:
    s = scrape(None)
    assert get(s, "pgwarden_agent_ready", node="node1") == 0
    assert not any(name.startswith("patroni_") for name, _ in s)


def _obs(failover: FailoverRequest | None = None) -> Observation:
    return Observation(now=10.0, wall=1000.0, me=Me("node2", Tags(), "h", 1, "u"),
                       pg=PgView(DataState.VALID, running=True, in_recovery=True),
                       store=replace(view(), failover=failover), lease=Lease(False))


def test_counters_from_the_telemetry() -> None:
    t = Telemetry("node2")
    primary = PgView(DataState.VALID, running=True, in_recovery=False)
    t.store_call("read", 0.002, True)
    t.store_call("renew", 0.3, False)
    t.loop_done(_obs(), Decision((), "replica of node1, streaming"), 0.02, _obs().pg, Facts())
    t.loop_done(_obs(), Decision((Promote(),), "no leader; promoting"), 0.2, primary, Facts())
    switch = FailoverRequest("switchover", "node1", "node2", None)
    t.loop_done(_obs(switch), Decision((Promote(), RenewLease()), "promoting"), 0.2, primary,
                Facts(lease_deadline=1e12, fencer_armed=True, fencer_deadline=1e12))
    s = scrape(state(CAUGHT_UP, holds=True), t, node="node2")
    assert get(s, "pgwarden_failovers_total", node="node2") == 1
    assert get(s, "pgwarden_switchovers_total", node="node2") == 1
    assert get(s, "pgwarden_actions_total", node="node2", action="Promote") == 2
    assert get(s, "pgwarden_loop_duration_seconds_count", node="node2") == 3
    assert get(s, "pgwarden_loop_duration_seconds_bucket", node="node2", le="0.025") == 1
    assert get(s, "pgwarden_store_request_duration_seconds_count", node="node2", operation="renew") == 1
    assert get(s, "pgwarden_store_request_errors_total", node="node2", operation="renew") == 1
    assert get(s, "pgwarden_store_request_errors_total", node="node2", operation="read") == 0
    assert get(s, "pgwarden_fencer_armed", node="node2") == 1
    assert get(s, "pgwarden_lease_seconds_left", node="node2") > 0
    assert get(s, "patroni_dcs_last_seen", scope="demo", name="node2") == 1000
    assert get(s, "pgwarden_decisions_total", node="node2",
               rule="rule 4: promote only holding the lease") == 2


def test_lag_seconds_grow_while_behind_and_reset_when_level() -> None:
    t = Telemetry("node1")
    behind = _obs()
    t.loop_done(behind, Decision((), "x"), 0.01, behind.pg, Facts())
    later = replace(behind, now=14.0)
    t.loop_done(later, Decision((), "x"), 0.01, behind.pg, Facts())
    assert t.snapshot().facts.lag_seconds == {"node1": 0.0, "node2": 0.0, "node3": 4.0}
    level = replace(later, now=15.0, store=view(members=[PRIMARY, CAUGHT_UP,
                                                         replace(LAGGING, received_lsn=LEADER_LSN,
                                                                 replayed_lsn=LEADER_LSN, lsn=LEADER_LSN)]))
    t.loop_done(level, Decision((), "x"), 0.01, behind.pg, Facts())
    assert t.snapshot().facts.lag_seconds["node3"] == 0.0


def test_patroni_version_digits() -> None:
    assert patroni_version("4.0.0") == "040000"
    assert patroni_version("0.1.0") == "000100"
    assert patroni_version("1.2") == "010200"


def test_the_grafana_dashboard_queries_only_metrics_the_agent_serves() -> None:
    doc = json.loads((Path(__file__).parents[2] / "docs" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in doc["panels"] for t in p["targets"]]
    exprs += [v["query"] for v in doc["templating"]["list"] if v["type"] == "query"]
    wanted = {name for e in exprs for name in re.findall(r"pgwarden_[a-z_]+", e)}
    t = Telemetry("node1")
    t.store_call("read", 0.001, False)
    o = _obs()
    t.loop_done(o, Decision((RenewLease(),), "x"), 0.01, o.pg, Facts())
    served = {name for name, _ in scrape(state(), t)}
    assert wanted and wanted <= served, wanted - served
    assert all('cluster=~"$cluster"' in e for e in exprs if "pgwarden_" in e and "label_values" not in e)
