"""The fault schedule: drawn at random from a seed (so any run can be replayed with `--seed`),
then executed against a `FaultCluster` while the workload writes.

Which node is "the primary" is only known when a step starts, so the seed fixes the kinds,
the hold times, the gaps and which replica a replica fault picks (by rank); the run log records
the node each step hit.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tests.faults.harness import FaultCluster

KINDS = (
    "kill-primary",  # SIGKILL agent, fencer, postmaster and backends of the primary's node
    "kill-replica",  # the same on a replica
    "freeze-primary-agent",  # SIGSTOP the primary's agent for longer than ttl, then SIGCONT
    "restart-store",  # SIGKILL etcd or ZooKeeper, start it again on the same data
    "partition-primary-store",  # the primary cannot reach the store (nor the store it)
    "partition-primary-replicas",  # ... cannot reach either replica; the store and clients still can
    "partition-primary-all",  # ... cannot reach the store or the replicas; clients still reach it
    "isolate-primary",  # the primary's link is down: nobody reaches it, clients included
    "restart-primary",  # `ctl restart` of the leader (POST /restart to its REST API) under load
    "kill-postmaster-freeze-agent",  # SIGKILL the primary's postmaster only, then within a second
    #   SIGSTOP its agent for 3-7.5 ttl (12-30 s at ttl 4), then SIGCONT
    "kill-during-promotion",  # SIGKILL the primary's node, then the postmaster (only) of the
    #   replica that begins promoting, as soon as its agent logs it
    "store-outage",  # SIGKILL the store for 1-15 ttl (up to 60 s at ttl 4): with `failsafe: on`
    #   the primary writes on through it (rule 17); off, it demotes within ttl
    "store-outage-cut-primary",  # the store down and, ttl later, the primary cut off from both
    #   replicas (clients still reach it): it must stop writing within ttl of the cut
)
# Raft mode has no store process and no store host: the agents are the store, so losing the
# store is losing the peers (partition-primary-replicas, which costs the primary its majority).
STORE_HOST_KINDS = ("restart-store", "partition-primary-store", "store-outage",
                    "store-outage-cut-primary")
PROMOTING_LOG = "promoting PostgreSQL"  # what an agent logs as it promotes its server


# Drawn only in runs with `failsafe: on` (so the schedules of existing seeds stay as they were).
FAILSAFE_KINDS = ("store-outage", "store-outage-cut-primary")


def kinds_for(store: str, failsafe: bool = False) -> tuple[str, ...]:
    return tuple(k for k in KINDS if (store != "raft" or k not in STORE_HOST_KINDS)
                 and (failsafe or k not in FAILSAFE_KINDS))


@dataclass(frozen=True)
class Step:
    index: int
    kind: str
    hold: float  # seconds the fault lasts (a dead node stays dead, a partition stays cut)
    gap: float  # seconds of calm after the cluster recovered, before the next step
    pick: int  # which replica (by rank in name order) a replica fault takes
    delay: float = 0.0  # kill-postmaster-freeze-agent: seconds from the kill to the SIGSTOP

    def describe(self) -> str:
        extra = f" delay {self.delay:.2f}s" if self.kind == "kill-postmaster-freeze-agent" else ""
        return f"#{self.index} {self.kind} hold {self.hold:.1f}s gap {self.gap:.1f}s pick {self.pick}{extra}"


def draw(seed: int, duration: float, ttl: float, kinds: Sequence[str] | None = None) -> list[Step]:
    """Steps until their planned hold + gap time covers `duration` (at least one step). Holds
    range from below ttl (no failover should happen) to a few ttl (one must)."""
    if kinds is None:
        kinds = kinds_for("etcd")
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown or not kinds:
        raise ValueError(f"unknown fault kind(s) {unknown}" if unknown else "no fault kinds to draw from")
    rng = random.Random(seed)
    steps: list[Step] = []
    planned = 0.0
    while planned < duration or not steps:
        kind = rng.choice(list(kinds))
        delay = 0.0
        if kind == "freeze-primary-agent":
            hold = ttl + rng.uniform(0.5, 2 * ttl)
        elif kind in ("restart-store", "restart-primary"):
            # restart-primary: how long the step lets the restart run before the recovery wait
            hold = rng.uniform(0.5, 2 * ttl)
        elif kind == "kill-postmaster-freeze-agent":
            hold = rng.uniform(3 * ttl, 7.5 * ttl)  # how long the agent stays stopped
        elif kind in ("store-outage", "store-outage-cut-primary"):
            hold = rng.uniform(ttl, 15 * ttl)
            delay = rng.uniform(0.0, 1.0)
        else:
            hold = rng.uniform(0.5, 3 * ttl)
        gap = rng.uniform(1.0, 2 * ttl)
        steps.append(Step(len(steps) + 1, kind, round(hold, 2), round(gap, 2), rng.randrange(2),
                          round(delay, 2)))
        planned += hold + gap
    return steps


@dataclass
class Event:
    at: float  # monotonic
    text: str


@dataclass
class Nemesis:
    """Runs the steps; `events` is the run's timeline, for the report."""

    cluster: FaultCluster
    log: Callable[[str], None] = print
    recovery_timeout: float = 45.0
    promotion_timeout: float = 30.0  # kill-during-promotion: longest wait for a replica to promote
    events: list[Event] = field(default_factory=list)
    unrecovered: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        now = time.monotonic()
        self.events.append(Event(now, text))
        self.log(f"[{self.cluster.elapsed():7.2f}s mono {now:.3f}] {text}")

    def run(self, steps: Sequence[Step], end_by: float) -> None:
        for step in steps:
            if time.monotonic() >= end_by:
                self.note(f"time is up: {len(steps) - step.index + 1} step(s) not run")
                break
            self.step(step)

    def step(self, step: Step) -> None:
        cl = self.cluster
        primary = cl.wait_primary(timeout=20.0)
        replicas = [n for n in cl.names if n != primary]
        target = primary if primary is not None else cl.names[step.pick % len(cl.names)]
        if primary is None:
            self.note(f"no primary before step {step.index}; primary faults hit {target}")
        kind = step.kind
        if kind == "kill-replica":
            target = replicas[step.pick % len(replicas)]
        self.note(f"step {step.describe()} -> {target if kind != 'restart-store' else cl.store}")
        try:
            if kind in ("kill-primary", "kill-replica"):
                pids = cl.crash(target)
                self.note(f"SIGKILLed {target}: pids {pids}")
                time.sleep(step.hold)
                cl.start_agent(target)
                self.note(f"restarted {target}'s agent")
            elif kind == "freeze-primary-agent":
                pid = cl.freeze_agent(target)
                self.note(f"SIGSTOPped {target}'s agent (pid {pid})")
                try:
                    time.sleep(step.hold)
                finally:
                    cl.thaw_agent(target)
                    self.note(f"SIGCONTed {target}'s agent")
            elif kind == "restart-primary":
                before = cl.postmaster_pid(target)
                code, msg = cl.request_restart(target)
                self.note(f"POST /restart to {target} (postmaster {before}): HTTP {code}: {msg}")
                time.sleep(step.hold)
                self.note(f"{target}'s postmaster after {step.hold:.1f}s: {cl.postmaster_pid(target)}")
            elif kind == "kill-postmaster-freeze-agent":
                self._kill_postmaster_freeze_agent(step, target)
            elif kind == "kill-during-promotion":
                self._kill_during_promotion(step, target, replicas if primary is not None
                                            else [n for n in cl.names if n != target])
            elif kind == "restart-store":
                cl.kill_store()
                self.note(f"SIGKILLed {cl.store}")
                time.sleep(step.hold)
                cl.start_store()
                self.note(f"{cl.store} restarted and healthy")
            elif kind in ("store-outage", "store-outage-cut-primary"):
                cl.kill_store()
                self.note(f"SIGKILLed {cl.store} for {step.hold:.1f}s")
                if kind == "store-outage-cut-primary":
                    time.sleep(min(cl.ttl, step.hold))
                    cl.cut_from_peers(target)
                    self.note(f"{target} cut from the replicas (clients still reach it)")
                time.sleep(max(0.0, step.hold - (cl.ttl if kind == "store-outage-cut-primary" else 0.0)))
                cl.heal()
                cl.start_store()
                self.note(f"network healed; {cl.store} restarted and healthy")
            elif kind == "partition-primary-store":
                cl.cut_from_store(target)
                self._hold_then_heal(step, f"{target} cut from {cl.store}")
            elif kind == "partition-primary-replicas":
                cl.cut_from_peers(target)
                self._hold_then_heal(step, f"{target} cut from the replicas")
            elif kind == "partition-primary-all":
                cl.cut_from_store(target)
                cl.cut_from_peers(target)
                self._hold_then_heal(step, f"{target} cut from {cl.store} and the replicas "
                                           f"(clients still reach it)")
            elif kind == "isolate-primary":
                cl.isolate(target)
                self._hold_then_heal(step, f"{target} isolated (link down)")
            else:
                raise ValueError(f"unknown fault kind {kind!r}")
        finally:
            self.ensure_healed()
        healed = time.monotonic()
        problems = cl.wait_converged(self.recovery_timeout)
        if problems:
            self.unrecovered.append(f"after step {step.index} ({kind} on {target}): {problems}")
            self.note(f"not recovered after {self.recovery_timeout:g}s: {problems}")
        else:
            self.note(f"recovered in {time.monotonic() - healed:.1f}s: primary {cl.primary()}")
        time.sleep(step.gap)

    def _kill_postmaster_freeze_agent(self, step: Step, target: str) -> None:
        """SIGKILL the postmaster alone (the agent would restart PostgreSQL), then, `delay` later,
        SIGSTOP the agent for `hold`: the fencer must keep whatever PostgreSQL runs there from
        accepting writes once the lease is gone. The agent is SIGCONTed whatever happens."""
        cl = self.cluster
        pid = cl.kill_postmaster(target)
        self.note(f"SIGKILLed {target}'s postmaster (pid {pid})" if pid is not None
                  else f"{target} had no running postmaster to kill")
        time.sleep(step.delay)
        agent = cl.freeze_agent(target)
        try:
            self.note(f"SIGSTOPped {target}'s agent (pid {agent}) {step.delay:.2f}s after the kill; "
                      f"postmaster now {cl.postmaster_pid(target)}")
            time.sleep(step.hold)
        finally:
            cl.thaw_agent(target)
            self.note(f"SIGCONTed {target}'s agent; postmaster now {cl.postmaster_pid(target)}")

    def _kill_during_promotion(self, step: Step, target: str, replicas: list[str]) -> None:
        """SIGKILL the primary's node; as soon as a replica's agent logs "promoting PostgreSQL"
        (or its /status says "promoting", which the agent publishes later), SIGKILL that replica's
        postmaster only; after `hold` start the dead node's agent again."""
        cl = self.cluster
        offsets = {r: cl.log_size(r) for r in replicas}
        tails = {r: "" for r in replicas}
        pids = cl.crash(target)
        self.note(f"SIGKILLed {target}: pids {pids}; waiting for a replica to begin promoting")
        crashed = time.monotonic()
        deadline = crashed + self.promotion_timeout
        promoting: str | None = None
        how = ""
        polls = 0
        while promoting is None and time.monotonic() < deadline:
            for r in replicas:
                text, offsets[r] = cl.log_read(r, offsets[r])
                seen, tails[r] = tails[r] + text, (tails[r] + text)[-200:]
                if PROMOTING_LOG in seen:
                    promoting, how = r, "log"
                    break
            if promoting is None and polls % 25 == 24:
                for r in replicas:
                    s = cl.status(r)
                    if s is not None and s.get("state") == "promoting":
                        promoting, how = r, "/status"
                        break
            polls += 1
            if promoting is None:
                time.sleep(0.01)
        if promoting is None:
            self.note(f"no replica began promoting within {self.promotion_timeout:g}s of the kill")
        else:
            seen_at = time.monotonic()
            pid = cl.kill_postmaster(promoting)
            self.note(f"{promoting} began promoting ({how}, {seen_at - crashed:.2f}s after the kill); "
                      + (f"SIGKILLed its postmaster (pid {pid}) {time.monotonic() - seen_at:.3f}s later"
                         if pid is not None else "it had no running postmaster to kill"))
        time.sleep(step.hold)
        cl.start_agent(target)
        self.note(f"restarted {target}'s agent")

    def _hold_then_heal(self, step: Step, what: str) -> None:
        self.note(what)
        time.sleep(step.hold)
        self.cluster.heal()
        self.note("network healed")

    def ensure_healed(self) -> None:
        """Whatever happened in a step (an exception included), leave no fault behind."""
        cl = self.cluster
        cl.heal()
        for n in list(cl.frozen):
            cl.thaw_agent(n)
            self.note(f"SIGCONTed {n}'s agent (clean-up)")
        if not cl.store_running():
            cl.start_store()
            self.note(f"{cl.store} started (clean-up)")
        for n in cl.names:
            if not cl.agent_alive(n):
                proc = cl.agents.get(n)
                code = proc.returncode if proc is not None else None
                if cl.net.pids(n):
                    cl.crash(n)
                cl.start_agent(n)
                self.note(f"{n}'s agent had exited (code {code}); started it again (clean-up)")
