"""One fault-injection experiment from start to verdict: build the namespaced cluster, start the
workload, run the seeded schedule, heal, wait for every node to come back, stop the workload and
hand the history to the checker. Returns an `Outcome` whose `report` says everything needed to
understand or replay a failure.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pgwarden.local.layout import seed_settings
from tests.faults import checker
from tests.faults.harness import FaultCluster, tampered
from tests.faults.schedule import Nemesis, Step, draw, kinds_for
from tests.faults.workload import TABLE, Workload
from tests.support.netns import Network

FINAL_CONVERGENCE = 90.0  # seconds for every node to be back after the last fault healed
WRITES_RESUME = 30.0  # seconds for a write to succeed once the cluster converged


@dataclass
class Outcome:
    seed: int
    sync: str | None
    steps: list[Step]
    violations: list[checker.Violation] = field(default_factory=list)
    not_converged: list[str] = field(default_factory=list)  # rule (c) at the end
    unrecovered: list[str] = field(default_factory=list)  # between steps (informational)
    async_lost: int = 0  # async mode: acknowledged commits missing (allowed, reported)
    acks: int = 0
    report: str = ""

    @property
    def ok(self) -> bool:
        return not self.violations and not self.not_converged


def experiment(sync: str | None, seed: int, duration: float, kinds: tuple[str, ...] | None = None,
               writers: int = 4, log: Callable[[str], None] = print, store: str = "etcd",
               failsafe: bool = False, strict: bool = False) -> Outcome:
    lines: list[str] = []

    def say(text: str) -> None:
        lines.append(text)
        log(text)

    with Network() as net:
        cl = FaultCluster(net, sync=sync, log=say, store=store)
        sets = (*(("failsafe=on",) if failsafe else ()),
                *(("synchronous_mode_strict=true",) if strict else ()))
        if sets:
            cl.settings = seed_settings(sync, sets)
        steps = draw(seed, duration, cl.ttl, kinds if kinds is not None else kinds_for(store, failsafe))
        out = Outcome(seed, sync, steps)
        only = f" --fault-kinds {','.join(kinds)}" if kinds is not None else ""
        say(f"fault schedule seed {seed} (replay: pytest tests/faults/test_faults.py --seed {seed} "
            f"--duration {duration:g}{only}), store {store}, synchronous_mode {sync or 'off'}, "
            f"failsafe {'on' if failsafe else 'off'}{', strict' if strict else ''}, "
            f"ttl {cl.ttl:g}s, network 10.77.{net.octet}.0/24, dir {cl.dir}")
        for s in steps:
            say(f"  {s.describe()}")
        nemesis = Nemesis(cl, log=say)
        keep = True
        try:
            t0 = time.monotonic()
            cl.start()
            say(f"cluster up in {time.monotonic() - t0:.1f}s: primary {cl.primary()}")
            if sync:
                _wait_sync_standby(cl)
            work = Workload(cl.dsn(), writers=writers, max_seconds=2 * duration + 300)
            work.prepare()
            # Async mode may lose what the replicas never received: the table itself must be on
            # every node before a fault, or losing it would stop the workload for good.
            _wait(lambda: all(cl.has_table(n, TABLE) for n in cl.names), 30,
                  f"{TABLE} replicated to every node")
            work.start()
            try:
                _wait(lambda: work.progress() > 20, 30, "writes flowing before the first fault")
                nemesis.run(steps, end_by=time.monotonic() + duration)
                nemesis.ensure_healed()
                healed_at = time.monotonic()
                out.not_converged = cl.wait_converged(FINAL_CONVERGENCE)
                nemesis.note(f"final convergence: {out.not_converged or 'every node back'} "
                             f"after {time.monotonic() - healed_at:.1f}s")
                resumed_from = time.monotonic()
                if not _wait(lambda: work.last_ack_after(resumed_from), WRITES_RESUME, None):
                    out.not_converged.append(f"no write acknowledged within {WRITES_RESUME:g}s after "
                                             f"the cluster converged")
            finally:
                work.stop()
            gone = tampered(cl.dir, cl.names)
            if gone:
                raise RuntimeError(f"the test directory was changed from outside during the run "
                                   f"(missing {gone}); the run proves nothing either way")
            acks, failures = work.acks, work.failures
            out.acks = len(acks)
            out.unrecovered = nemesis.unrecovered
            out.violations = checker.concurrent_writers(acks)
            final = cl.wait_primary(10.0)
            if final is None:
                out.not_converged.append("no primary at the end to check acknowledged commits on")
            else:
                present = cl.present_ids(final, TABLE)
                if sync:  # "on" and "quorum": an acknowledged commit is never lost
                    out.violations += checker.lost_commits(acks, present)
                else:
                    out.async_lost = len(checker.missing(acks, present))
            say(checker.summary(acks, failures))
            for e in _failure_digest(failures):
                say(f"  {e}")
            if out.async_lost:
                say(f"async mode: {out.async_lost} acknowledged commit(s) not on the final primary "
                    f"(allowed without synchronous_mode)")
            for v in out.violations:
                say(f"VIOLATION {v.kind}: {v.detail}")
            for u in out.unrecovered:
                say(f"slow recovery {u}")
            keep = end_of_run(cl, out.not_converged, out.ok, say)
        finally:
            write_report(cl, lines)
            cl.close(keep=keep)
    out.report = "\n".join(lines)
    return out


def _wait(cond: Callable[[], bool], timeout: float, what: str | None) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            if what is not None:
                raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
            return False
        time.sleep(0.1)
    return True


def _wait_sync_standby(cl: FaultCluster) -> None:
    """Rule (b) is about commits a synchronous standby confirmed: start writing once one is (in
    quorum mode, once a replica is a quorum voter)."""
    def ready() -> bool:
        return any(s is not None and (s.get("sync_standby") or s.get("quorum_standby"))
                   for s in cl.statuses().values())
    _wait(ready, 30, "a synchronous (or quorum) standby")


def _failure_digest(failures: list[checker.Failure]) -> list[str]:
    counts: dict[tuple[str, str], int] = {}
    for f in failures:
        key = (f.phase, f.error.split(":")[0] + ":" + f.error.split(":", 1)[-1][:60])
        counts[key] = counts.get(key, 0) + 1
    return [f"{n} x {phase}: {err}" for (phase, err), n in sorted(counts.items(), key=lambda kv: -kv[1])[:8]]


def end_of_run(cl: FaultCluster, not_converged: list[str], ok: bool, say: Callable[[str], None]) -> bool:
    """Say what did not converge and, for a failed run, each agent's last log lines; True when
    the run's directory is to be kept for a post-mortem."""
    for p in not_converged:
        say(f"NOT CONVERGED: {p}")
    if not ok:
        for n in cl.names:
            say(f"--- last lines of {n}'s agent log ---\n{cl.log_excerpt(n)}")
    return not ok


def write_report(cl: FaultCluster, lines: list[str]) -> None:
    try:
        (cl.dir / "report.txt").write_text("\n".join(lines) + "\n")
    except OSError:
        pass
