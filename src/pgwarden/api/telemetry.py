"""What the agent records for /metrics, /decisions and the dashboard beyond its NodeState: loop
and store-call timings, counts of decisions and actions, promotions, and its last few hundred
decisions with the observations they were made from (for `ctl explain` and `ctl replay`).

The HA loop writes (one short lock per loop); the API's threads read at scrape time. Nothing here
does I/O; the JSON for an observation is built when someone asks, not on the loop.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import msgspec

from pgwarden.api.health import member_lag
from pgwarden.core.actions import Action, Decision, Promote
from pgwarden.core.model import Observation, PgView, int_to_lsn
from pgwarden.core.rules import rule_for

DECISIONS_KEPT = 300
LOOP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
STORE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Histogram:
    """Counts per bucket (upper bounds, +Inf implied), their sum and count; not thread-safe alone."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        """Prometheus buckets: (le, observations <= le), ending with +Inf."""
        out: list[tuple[str, float]] = []
        total = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), float(total)))
        return out


@dataclass
class DecisionRecord:
    """One decision, with the loops that repeated it unchanged folded in (`repeats`, `last_at`)."""

    node: str
    at: float  # wall time of the first loop that made it
    last_at: float
    repeats: int
    message: str
    rule: str
    actions: tuple[Action, ...]
    observation: Observation  # the first loop's, complete (for replay)


@dataclass
class Facts:
    """The agent's own state at the end of its last loop that NodeState does not carry."""

    lease_deadline: float = 0.0  # monotonic; 0 when not held
    fencer_armed: bool = False
    fencer_deadline: float = 0.0  # monotonic
    store_last_seen: float | None = None  # wall time of the last successful store read
    lag_seconds: dict[str, float] = field(default_factory=dict)  # member -> seconds behind


class Telemetry:
    def __init__(self, node: str, kept: int = DECISIONS_KEPT) -> None:
        self.node = node
        self._lock = threading.Lock()
        self._decisions: deque[DecisionRecord] = deque(maxlen=kept)
        self.loop = Histogram(LOOP_BUCKETS)
        self.store_calls: dict[str, Histogram] = {}
        self.store_errors: Counter[str] = Counter()
        self.rules: Counter[str] = Counter()
        self.actions: Counter[str] = Counter()
        self.promotions: Counter[str] = Counter()  # "failover" | "switchover"
        self.facts = Facts()
        self._caught_up_at: dict[str, float] = {}

    # -- writers (the HA loop, the store wrapper) ------------------------------------------------

    def store_call(self, operation: str, seconds: float, ok: bool) -> None:
        with self._lock:
            h = self.store_calls.get(operation)
            if h is None:
                h = self.store_calls[operation] = Histogram(STORE_BUCKETS)
            h.observe(seconds)
            if not ok:
                self.store_errors[operation] += 1

    def loop_done(self, obs: Observation, decision: Decision, seconds: float, after: PgView,
                  facts: Facts) -> None:
        """One loop: `obs` went into the core, `decision` came out, `after` is PostgreSQL once
        the actions ran; `facts` the lease and fencer as they stand now."""
        rule = rule_for(decision)
        promoted = (any(isinstance(a, Promote) for a in decision.actions)
                    and after.running and after.in_recovery is False)
        view = obs.store
        with self._lock:
            self.loop.observe(seconds)
            self.rules[rule] += 1
            for a in decision.actions:
                self.actions[type(a).__name__] += 1
            if promoted:
                asked = view is not None and view.failover is not None and view.failover.kind == "switchover"
                self.promotions["switchover" if asked else "failover"] += 1
            if view is not None:
                facts.store_last_seen = obs.wall
                facts.lag_seconds = self._lag_seconds(obs)
            else:
                facts.store_last_seen = self.facts.store_last_seen
                facts.lag_seconds = self.facts.lag_seconds
            self.facts = facts
            last = self._decisions[-1] if self._decisions else None
            if last is not None and last.message == decision.message and last.actions == decision.actions:
                last.repeats += 1
                last.last_at = obs.wall
            else:
                self._decisions.append(DecisionRecord(self.node, obs.wall, obs.wall, 1, decision.message,
                                                      rule, decision.actions, obs))

    def _lag_seconds(self, obs: Observation) -> dict[str, float]:
        """How long each member has been behind the leader's published position (0 when level)."""
        view = obs.store
        assert view is not None
        out: dict[str, float] = {}
        for name, m in view.members.items():
            lag = 0 if view.leader is not None and view.leader.name == name else member_lag(m, view)
            if lag is None:
                continue
            if lag == 0 or name not in self._caught_up_at:
                self._caught_up_at[name] = obs.now
            out[name] = 0.0 if lag == 0 else obs.now - self._caught_up_at[name]
        for gone in set(self._caught_up_at) - set(view.members):
            del self._caught_up_at[gone]
        return out

    # -- readers (the API's threads) --------------------------------------------------------------

    def snapshot(self) -> TelemetrySnapshot:
        with self._lock:
            return TelemetrySnapshot(
                loop=(self.loop.cumulative(), self.loop.sum),
                store_calls={op: (h.cumulative(), h.sum) for op, h in self.store_calls.items()},
                store_errors=dict(self.store_errors), rules=dict(self.rules),
                actions=dict(self.actions), promotions=dict(self.promotions), facts=self.facts,
            )

    def decisions(self, last: int | None = None, since: float | None = None) -> list[DecisionRecord]:
        with self._lock:
            records = list(self._decisions)
        if since is not None:
            records = [r for r in records if r.last_at >= since]
        return records[-last:] if last else records


@dataclass(frozen=True)
class TelemetrySnapshot:
    loop: tuple[list[tuple[str, float]], float]
    store_calls: dict[str, tuple[list[tuple[str, float]], float]]
    store_errors: dict[str, int]
    rules: dict[str, int]
    actions: dict[str, int]
    promotions: dict[str, int]
    facts: Facts


# -- JSON ---------------------------------------------------------------------------------------


def action_json(a: Action) -> dict[str, Any]:
    body = msgspec.to_builtins(a, order="deterministic")
    return {"kind": type(a).__name__, **(body if isinstance(body, dict) else {})}


def summary_json(obs: Observation) -> dict[str, Any]:
    """What a person needs to follow the decision: the lease, our server, the peers, the sync set."""
    view = obs.store
    pg = obs.pg
    role = "primary" if pg.running and pg.in_recovery is False else "replica" if pg.running else "stopped"
    members: dict[str, Any] = {}
    if view is not None:
        for name, m in sorted(view.members.items()):
            members[name] = {"role": m.role.value, "state": m.state, "running": m.running,
                             "timeline": m.timeline, "lsn": int_to_lsn(m.lsn)}
    peers = {name: {"reachable": p.reachable, "running": p.running, "timeline": p.timeline,
                    "received_lsn": int_to_lsn(p.received_lsn), "lsn": int_to_lsn(p.lsn)}
             for name, p in sorted(obs.peers.items())}
    return {
        "store_ok": view is not None,
        "leader": view.leader.name if view is not None and view.leader is not None else None,
        "lease_held": obs.lease.held,
        "lease_left": round(obs.lease.deadline - obs.now, 3) if obs.lease.held else None,
        "leaderless_for": round(obs.leaderless_for, 3),
        "postgres": {"role": role, "healthy": pg.healthy, "timeline": pg.timeline,
                     "lsn": int_to_lsn(pg.lsn), "received_lsn": int_to_lsn(pg.received_lsn)},
        "members": members,
        "peers": peers,
        "sync": sorted(view.sync.members) if view is not None and view.sync is not None else None,
        "failover": (None if view is None or view.failover is None else
                     {"kind": view.failover.kind, "leader": view.failover.leader,
                      "candidate": view.failover.candidate}),
        "paused": view.settings.paused if view is not None else None,
    }


def record_json(r: DecisionRecord, full: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "node": r.node, "at": r.at, "last_at": r.last_at, "repeats": r.repeats,
        "message": r.message, "rule": r.rule, "actions": [action_json(a) for a in r.actions],
        "summary": summary_json(r.observation),
    }
    if full:
        out["observation"] = msgspec.to_builtins(r.observation, order="deterministic")
    return out


def decode_observation(data: Any) -> Observation:
    """An observation back from record_json's "observation" (raises msgspec.ValidationError)."""
    return msgspec.convert(data, Observation)


def facts_json(t: Telemetry) -> dict[str, Any]:
    """The lease and fencer countdowns (seconds from now), the store's last answer, lag in seconds."""
    f = t.snapshot().facts
    now = time.monotonic()
    return {
        "lease_left": round(f.lease_deadline - now, 3) if f.lease_deadline else None,
        "fencer_armed": f.fencer_armed,
        "fencer_left": round(f.fencer_deadline - now, 3) if f.fencer_armed else None,
        "store_last_seen": f.store_last_seen,
        "lag_seconds": {k: round(v, 3) for k, v in sorted(f.lag_seconds.items())},
    }
