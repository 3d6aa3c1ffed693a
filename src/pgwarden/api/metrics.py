"""GET /metrics: the node in Prometheus' text format, built at scrape time from the NodeState the
agent published and its Telemetry (a custom collector: no metric objects updated on the loop).

Two families: `pgwarden_*` (docs/observability.md lists them) and Patroni's own names and labels
(`scope`, `name`), so Patroni dashboards and alerts work unchanged. Patroni's LSN and timeline
metrics are declared "counter" there without the `_total` suffix that prometheus_client would add
to a counter; they are exposed here as gauges under exactly Patroni's names.

prometheus_client is imported only by this module, which the API imports on the first scrape
(the agent's resident memory: docs/observability.md).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from pgwarden import __version__
from pgwarden.api.health import member_lag, sync_flags
from pgwarden.api.state import NodeState
from pgwarden.api.telemetry import Telemetry
from pgwarden.core.model import Role

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Patroni's patroni_postgres_state values (docs/rest_api.rst), by our member state's first word.
_PATRONI_STATES = {"bootstrapping": 0, "cloning": 4, "running": 5, "unhealthy": 5, "starting": 6,
                   "restarting": 9, "stopping": 11, "stopped": 12, "uninitialized": 12}


def patroni_version(version: str) -> str:
    """Patroni's version metric: the semver without periods, two digits each (4.0.0 -> 040000)."""
    parts = [*version.split("+")[0].split("."), "0", "0", "0"][:3]
    digits = [p if p.isdigit() else "0" for p in parts]
    return "".join(f"{int(d):02d}" for d in digits)


class NodeCollector(Collector):
    def __init__(self, state: NodeState | None, telemetry: Telemetry | None, node: str,
                 scope: str | None) -> None:
        self._state = state
        self._telemetry = telemetry
        self._node = node
        self._scope = scope or ""

    def collect(self) -> Iterator[Metric]:
        yield from self._pgwarden()
        if self._state is not None:
            yield from self._patroni(self._state)

    # -- pgwarden_* -------------------------------------------------------------------------------

    def _pgwarden(self) -> Iterator[Metric]:
        node = ["cluster", "node"]
        me = [self._scope, self._node]
        info = GaugeMetricFamily("pgwarden_info", "The agent's version (always 1).",
                                 labels=["cluster", "node", "version"])
        info.add_metric([self._scope, self._node, __version__], 1)
        yield info
        st = self._state
        agent_up = GaugeMetricFamily("pgwarden_agent_ready", "1 once the agent has published its state.",
                                     labels=node)
        agent_up.add_metric(me, 0 if st is None else 1)
        yield agent_up
        if st is not None:
            yield from self._node_state(st)
        if self._telemetry is not None:
            yield from self._telemetry_metrics(st)

    def _node_state(self, st: NodeState) -> Iterator[Metric]:
        node, me = ["cluster", "node"], [self._scope, self._node]
        m, view = st.member, st.cluster
        role = GaugeMetricFamily("pgwarden_role", "1 for this node's current role (primary, replica, "
                                 "standby_leader, unknown).", labels=["cluster", "node", "role"])
        for r in Role:
            role.add_metric([self._scope, self._node, r.value], 1 if m.role == r else 0)
        yield role
        yield _gauge("pgwarden_timeline", "PostgreSQL timeline (0 when unknown).", node, me, m.timeline or 0)
        yield _gauge("pgwarden_postgres_up", "1 if PostgreSQL runs and answers.", node, me, int(m.running))
        yield _gauge("pgwarden_holds_lease", "1 if this node holds the leader lease.", node, me,
                     int(st.holds_lease))
        yield _gauge("pgwarden_store_ok", "1 if the last store call of the loop succeeded.", node, me,
                     int(st.store_ok))
        yield _gauge("pgwarden_lsn_bytes", "This node's WAL position (write LSN on a primary, received or "
                     "replayed on a replica) in bytes.", node, me, m.lsn or 0)
        if m.logical_slots and m.lsn is not None:
            slot_lag = GaugeMetricFamily("pgwarden_logical_slot_lag_bytes", "Bytes of WAL between this "
                                         "node's position and each logical slot's confirmed position "
                                         "(what its subscriber has yet to confirm).",
                                         labels=["cluster", "node", "slot"])
            for slot, confirmed in m.logical_slots:
                slot_lag.add_metric([self._scope, self._node, slot], max(0, m.lsn - confirmed))
            yield slot_lag
        if view is None:
            return
        yield _gauge("pgwarden_paused", "1 while automatic failover is paused.", node, me,
                     int(view.settings.paused))
        yield _gauge("pgwarden_members", "Members in the store.", node, me, len(view.members))
        yield _gauge("pgwarden_cluster_has_leader", "1 if the store names a leader.", node, me,
                     int(view.leader is not None))
        yield _gauge("pgwarden_synchronous_set_size", "Members of the store's synchronous set.", node, me,
                     len(view.sync.members) if view.sync is not None else 0)
        lag = GaugeMetricFamily("pgwarden_replication_lag_bytes", "Bytes each member is behind the "
                                "leader's published position, as this node's store snapshot shows.",
                                labels=["cluster", "node", "member"])
        leader = view.leader.name if view.leader is not None else None
        for name, mem in sorted(view.members.items()):
            value = 0 if name == leader else member_lag(mem, view)
            if value is not None:
                lag.add_metric([self._scope, self._node, name], value)
        yield lag

    def _telemetry_metrics(self, st: NodeState | None) -> Iterator[Metric]:
        assert self._telemetry is not None
        t = self._telemetry.snapshot()
        node, me = ["cluster", "node"], [self._scope, self._node]
        f = t.facts
        now = time.monotonic()
        lag_s = GaugeMetricFamily("pgwarden_replication_lag_seconds", "Seconds each member has been "
                                  "behind the leader's published position (0 when level).",
                                  labels=["cluster", "node", "member"])
        for name, secs in sorted(f.lag_seconds.items()):
            lag_s.add_metric([self._scope, self._node, name], round(secs, 3))
        yield lag_s
        held = st is not None and st.holds_lease and f.lease_deadline > 0
        yield _gauge("pgwarden_lease_seconds_left", "Seconds to this node's lease deadline (leader only; "
                     "0 elsewhere).", node, me, max(0.0, f.lease_deadline - now) if held else 0.0)
        yield _gauge("pgwarden_fencer_armed", "1 while the fencer would stop PostgreSQL at its deadline.",
                     node, me, int(f.fencer_armed))
        yield _gauge("pgwarden_fencer_deadline_seconds", "Seconds to the fencer's deadline (0 when not "
                     "armed).", node, me, max(0.0, f.fencer_deadline - now) if f.fencer_armed else 0.0)
        if f.store_last_seen is not None:
            yield _gauge("pgwarden_store_last_seen_timestamp_seconds", "When the store last answered "
                         "(epoch seconds).", node, me, f.store_last_seen)
        buckets, total = t.loop
        loop = HistogramMetricFamily("pgwarden_loop_duration_seconds", "One HA loop: observe, decide, "
                                     "execute, publish.", labels=node)
        loop.add_metric(me, buckets, total)
        yield loop
        calls = HistogramMetricFamily("pgwarden_store_request_duration_seconds", "Store requests by "
                                      "operation (read, put, delete, acquire, renew, take_over, release).",
                                      labels=["cluster", "node", "operation"])
        for op, (b, s) in sorted(t.store_calls.items()):
            calls.add_metric([self._scope, self._node, op], b, s)
        yield calls
        errors = CounterMetricFamily("pgwarden_store_request_errors", "Store requests that failed, by "
                                     "operation.", labels=["cluster", "node", "operation"])
        for op in sorted(t.store_calls):
            errors.add_metric([self._scope, self._node, op], t.store_errors.get(op, 0))
        yield errors
        rules = CounterMetricFamily("pgwarden_decisions", "Loops by the rule that chose the decision.",
                                    labels=["cluster", "node", "rule"])
        for rule, n in sorted(t.rules.items()):
            rules.add_metric([self._scope, self._node, rule], n)
        yield rules
        actions = CounterMetricFamily("pgwarden_actions", "Actions the core asked for, by kind.",
                                      labels=["cluster", "node", "action"])
        for kind, n in sorted(t.actions.items()):
            actions.add_metric([self._scope, self._node, kind], n)
        yield actions
        for kind, doc in (("failover", "without a switchover request"), ("switchover", "by a switchover")):
            c = CounterMetricFamily(f"pgwarden_{kind}s", f"Promotions of this node {doc} (sum over "
                                    "members for the cluster's).", labels=node)
            c.add_metric(me, t.promotions.get(kind, 0))
            yield c

    # -- Patroni's names ----------------------------------------------------------------------------

    def _patroni(self, st: NodeState) -> Iterator[Metric]:
        labels = ["scope", "name"]
        values = [self._scope, self._node]
        m, view = st.member, st.cluster
        primary = m.role == Role.PRIMARY
        replica = m.role == Role.REPLICA
        leader = primary and st.holds_lease
        is_sync, is_quorum = sync_flags(st)
        state = _PATRONI_STATES.get(m.state.split(" ")[0], 5 if m.running else 12)

        def g(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return _gauge(name, doc, labels, values, value)

        yield g("patroni_version", "Patroni semver without periods (here: pgwarden's).",
                float(patroni_version(m.version or __version__)))
        yield g("patroni_postgres_running", "Value is 1 if Postgres is running, 0 otherwise.",
                int(m.running))
        yield g("patroni_primary", "Value is 1 if this node is the leader, 0 otherwise.", int(leader))
        yield g("patroni_master", "Value is 1 if this node is the leader, 0 otherwise (deprecated name).",
                int(leader))
        yield g("patroni_xlog_location", "Current location of the Postgres transaction log, 0 if this "
                "node is not the leader.", (m.lsn or 0) if primary else 0)
        yield g("patroni_standby_leader", "Value is 1 if this node is the standby_leader, 0 otherwise.",
                int(m.role == Role.STANDBY_LEADER))
        yield g("patroni_replica", "Value is 1 if this node is a replica, 0 otherwise.", int(replica))
        yield g("patroni_sync_standby", "Value is 1 if this node is a sync standby replica, 0 otherwise.",
                int(is_sync))
        yield g("patroni_quorum_standby", "Value is 1 if this node is a quorum standby replica, 0 "
                "otherwise.", int(is_quorum))
        yield g("patroni_xlog_received_location", "Current location of the received Postgres "
                "transaction log, 0 if this node is not a replica.", (m.received_lsn or 0) if replica else 0)
        yield g("patroni_xlog_replayed_location", "Current location of the replayed Postgres "
                "transaction log, 0 if this node is not a replica.", (m.replayed_lsn or 0) if replica else 0)
        yield g("patroni_xlog_replayed_timestamp", "Current timestamp of the replayed Postgres "
                "transaction log, 0 if null (not tracked by pgwarden: always 0).", 0)
        yield g("patroni_xlog_paused", "Value is 1 if the Postgres xlog is paused, 0 otherwise.", 0)
        yield g("patroni_postgres_streaming", "Value is 1 if Postgres is streaming, 0 otherwise.",
                int(replica and m.streaming))
        yield g("patroni_postgres_in_archive_recovery", "Value is 1 if Postgres is replicating from "
                "archive, 0 otherwise.", 0)
        yield g("patroni_postgres_server_version", "Version of Postgres (if running), 0 otherwise.",
                (m.pg_version or 0) if m.running else 0)
        yield g("patroni_cluster_unlocked", "Value is 1 if the cluster is unlocked, 0 if locked.",
                int(view is None or view.leader is None))
        yield g("patroni_failsafe_mode_is_active", "Value is 1 if failsafe mode is active, 0 if inactive.",
                0)
        yield g("patroni_postgres_timeline", "Postgres timeline of this node (if running), 0 otherwise.",
                (m.timeline or 0) if m.running else 0)
        if self._telemetry is not None and (seen := self._telemetry.snapshot().facts.store_last_seen):
            yield g("patroni_dcs_last_seen", "Epoch timestamp when DCS was last contacted successfully.",
                    int(seen))
        yield g("patroni_pending_restart", "Value is 1 if the node needs a restart, 0 otherwise.",
                int(m.pending_restart))
        yield g("patroni_is_paused", "Value is 1 if auto failover is disabled, 0 otherwise.",
                int(view is not None and view.settings.paused))
        yield g("patroni_postgres_state", "Numeric representation of Postgres state (Patroni's values: "
                "0=initdb, 4=creating_replica, 5=running, 6=starting, 9=restarting, 11=stopping, "
                "12=stopped).", state)


def _gauge(name: str, doc: str, labels: list[str], values: list[str], value: float) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc, labels=labels)
    g.add_metric(values, value)
    return g


def render(state: NodeState | None, telemetry: Telemetry | None, node: str, scope: str | None) -> bytes:
    """The text a scrape gets."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(state, telemetry, node, scope))
    return generate_latest(registry)
