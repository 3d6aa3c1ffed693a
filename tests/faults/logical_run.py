"""A fault run of logical replication between two HA clusters (issue 11, rule 19): the fault
harness's 3-node cluster, on the embedded PostgreSQL 18 with `wal_level = logical` (failover
slots, `synchronized_standby_slots`), is the source; a 2-node `pgwarden local up` cluster beside
it (on loopback, reaching the source through the harness's client host) subscribes with
`ctl logical subscribe --source "$(ctl dsn --with-password)"`. The workload writes unique ids into
the published table while the seeded schedule injects source faults.

After every step has settled (`Nemesis.step` waits for convergence), three checks, each bounded:

- *stall*: the subscription's slot on the source primary must confirm a WAL position taken
  after the step settled (writes are flowing) within STALL_BOUND seconds — a missing slot on a
  new primary, or an apply worker that never reconnects, shows up here;
- *slot-on-candidates*: `ctl logical status --format json` on the subscriber must report the
  slot on every source standby (`slot_on_candidates`) within CANDIDATES_BOUND seconds, so the
  next failover has a copy to fail over to (PostgreSQL's slot-sync worker);
- *exact rows*: writes paused (no commit in flight), the subscriber primary must hold exactly the
  source primary's ids — none missing, none extra, none twice (`logical.row_problems`) — within
  ROWS_BOUND seconds; then writes resume.

Each failed check is a violation carrying the seed and the step; the run goes on (the next
check starts from a clean comparison), so one run reports every bad step.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from pgwarden.local.layout import seed_settings
from tests.faults import checker
from tests.faults.harness import FaultCluster, tampered
from tests.faults.logical import fetch_ids, row_problems
from tests.faults.run import FINAL_CONVERGENCE, _wait, _wait_sync_standby, end_of_run, write_report
from tests.faults.schedule import Nemesis, Step, draw, kinds_for
from tests.faults.workload import TABLE, Workload
from tests.support.cluster import Cluster, pgwarden
from tests.support.netns import Network

LOGICAL = ("parameters.wal_level=logical", "parameters.hot_standby_feedback=on")
PUB, SUB = "faultpub", "faultsub"
STALL_BOUND = 90.0  # a step settled -> the slot confirms a position taken then
CANDIDATES_BOUND = 90.0  # ... -> the slot on every source standby (synced, persistent)
ROWS_BOUND = 90.0  # writes paused -> the subscriber holds exactly the source primary's rows
PAUSE_BOUND = 60.0  # longest wait for the writers' commits in flight to return


@dataclass
class LogicalOutcome:
    seed: int
    sync: str | None
    steps: list[Step]
    faults: int = 0  # steps run
    failovers: int = 0  # changes of source primary seen (looked before and after every step)
    checks: int = 0  # exact-rows checks made (after the start, each step, and the end)
    passed: int = 0  # ... of which the subscriber held exactly the source primary's rows
    acks: int = 0
    violations: list[str] = field(default_factory=list)  # rows, stalls, slots not on candidates
    not_converged: list[str] = field(default_factory=list)
    longest_catch_up: float = 0.0  # seconds, settle -> slot confirmed (stall check)
    longest_candidates: float = 0.0  # seconds, settle -> slot_on_candidates
    async_lost: int = 0  # acknowledged commits the source primary lacked at the last check
    report: str = ""

    @property
    def ok(self) -> bool:
        return not self.violations and not self.not_converged


class LogicalPair:
    """The source (fault harness) and the subscriber (`local up`) with the checks between them."""

    def __init__(self, cl: FaultCluster, sub: Cluster, say: Callable[[str], None]) -> None:
        self.cl, self.sub, self.say = cl, sub, say

    def src_ctl(self, *args: str) -> str:
        return pgwarden("ctl", "-c", str(self.cl.config_path(self.cl.names[0])), *args, timeout=90).stdout

    def subscribe(self) -> None:
        self.src_ctl("logical", "publish", PUB, "--tables", f"public.{TABLE}")
        # Through the source's logical gates when it runs them (15/16 in synchronous mode).
        gates = ("--logical",) if self.cl.gate else ()
        source = self.src_ctl("dsn", *gates, "--with-password").strip().splitlines()[-1]
        self.sub.ctl("logical", "subscribe", SUB, "--source", source, "--publications", PUB,
                     "--copy-schema")

    def status(self) -> dict[str, Any] | None:
        r = self.sub.ctl("logical", "status", "--format", "json", check=False)
        if r.returncode != 0:
            return None
        doc = json.loads(r.stdout)
        return next((s for s in doc.get("subscriptions", []) if s.get("name") == SUB), None)

    def _src_sql(self, query: str) -> list[tuple[Any, ...]] | None:
        p = self.cl.primary()
        if p is None:
            return None
        try:
            with psycopg.connect(self.cl.conninfo(p), autocommit=True) as c:
                return c.execute(query).fetchall()
        except psycopg.Error:
            return None

    def wait_slot_advances(self, bound: float) -> tuple[float | None, str]:
        """Seconds until the slot on the source primary confirms a position taken now (None: not
        within `bound`), and what was last seen."""
        t0 = time.monotonic()
        mark: str | None = None
        last = "no source primary answered"
        while time.monotonic() - t0 < bound:
            if mark is None:
                row = self._src_sql("SELECT pg_current_wal_lsn()::text")
                mark = str(row[0][0]) if row else None
            else:
                rows = self._src_sql(
                    f"SELECT confirmed_flush_lsn::text, confirmed_flush_lsn >= '{mark}'::pg_lsn "
                    f"FROM pg_replication_slots WHERE slot_name = '{SUB}'")
                if rows is not None:
                    if not rows:
                        last = f"no slot {SUB} on the source primary {self.cl.primary()}"
                    elif rows[0][1]:
                        return time.monotonic() - t0, ""
                    else:
                        last = f"slot confirmed {rows[0][0]}, waiting for {mark}"
            time.sleep(0.5)
        return None, last

    def wait_candidates(self, bound: float) -> tuple[float | None, str]:
        t0 = time.monotonic()
        last, first = "no status", ""
        while time.monotonic() - t0 < bound:
            s = self.status()
            if s is not None:
                hosts = [(c.get("host"), c.get("role"), c.get("has_slot")) for c in s.get("candidates", [])]
                last = (f"state {s.get('state')}, slot_on_candidates {s.get('slot_on_candidates')}, "
                        f"candidates {hosts}")
                if s.get("slot_on_candidates"):
                    return time.monotonic() - t0, last + (f"; first answer: {first}" if first else "")
                first = first or f"{last} at {time.monotonic() - t0:.1f}s"
            time.sleep(2.0)
        return None, last

    def wait_exact_rows(self, bound: float) -> tuple[float | None, list[str], set[int]]:
        """Seconds until the subscriber primary holds exactly the source primary's ids (None: not
        within `bound`), what still differed, and the source primary's ids last read."""
        t0 = time.monotonic()
        problems = ["not compared yet"]
        source: set[int] = set()
        while time.monotonic() - t0 < bound:
            p, d = self.cl.primary(), self.sub.primaries()
            if p is not None and len(d) == 1:
                try:
                    ids = fetch_ids(self.cl.conninfo(p), TABLE)
                    source = {int(i) for i in ids}
                    problems = row_problems(ids, fetch_ids(self.sub.conninfo(d[0]), TABLE))
                except psycopg.Error as e:
                    problems = [f"could not read: {_first_line(e)}"]
                if not problems:
                    return time.monotonic() - t0, [], source
            else:
                problems = [f"source primary {p}, subscriber primaries {d}"]
            time.sleep(1.0)
        return None, problems, source


def _secs(took: float | None) -> str:
    return f"{took:.1f}s" if took is not None else "NOT within bound"


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else repr(e)


def check(pair: LogicalPair, work: Workload, out: LogicalOutcome, label: str) -> None:
    """The three checks after `label` (a step, or the start/end of the run) settled."""
    say = pair.say
    took, last = pair.wait_slot_advances(STALL_BOUND)
    if took is None:
        out.violations.append(f"seed {out.seed}, {label}: slot-sync stall: the subscription did not "
                              f"advance within {STALL_BOUND:g}s ({last})")
    else:
        out.longest_catch_up = max(out.longest_catch_up, took)
    ctook, cl_last = pair.wait_candidates(CANDIDATES_BOUND)
    if ctook is None:
        out.violations.append(f"seed {out.seed}, {label}: slot-sync stall: slot_on_candidates not true "
                              f"within {CANDIDATES_BOUND:g}s ({cl_last})")
    else:
        out.longest_candidates = max(out.longest_candidates, ctook)
    out.checks += 1
    if not work.pause(PAUSE_BOUND):
        out.violations.append(f"seed {out.seed}, {label}: a write still in flight after {PAUSE_BOUND:g}s; "
                              f"rows compared anyway")
    try:
        rtook, problems, source = pair.wait_exact_rows(ROWS_BOUND)
        # Writes are paused: every acknowledged commit is in `acks`. Those the source primary
        # lacks were lost by an asynchronous failover; the subscriber must lack them too.
        lost = len({a.id for a in work.acks} - source) if source else None
    finally:
        work.resume()
    if lost is not None:
        out.async_lost = lost
    if rtook is None:
        out.violations.append(f"seed {out.seed}, {label}: exact rows: {'; '.join(problems)} "
                              f"(source primary {pair.cl.primary()})")
    else:
        out.passed += 1
    say(f"check after {label}: slot advanced in {_secs(took)}, slot_on_candidates in "
        f"{_secs(ctook)} ({cl_last}), acknowledged commits the source primary lacks so far: {lost}, rows "
        + (f"exactly equal after {rtook:.1f}s" if rtook is not None else f"DIFFER: {problems}"))


def self_test(pair: LogicalPair, work: Workload, say: Callable[[str], None]) -> None:
    """The exact-rows check must see a difference: a row written on the subscriber alone (id -1,
    never a workload id) is reported as extra, then removed."""
    primary = pair.sub.wait_primary()
    work.pause(PAUSE_BOUND)
    try:
        pair.sub.sql(primary, f"INSERT INTO {TABLE} VALUES (-1, 0)")
        took, problems, _ = pair.wait_exact_rows(3.0)
        pair.sub.sql(primary, f"DELETE FROM {TABLE} WHERE id = -1")
    finally:
        work.resume()
    if took is not None or not any("[-1]" in p for p in problems):
        raise AssertionError(f"the exact-rows check missed a row added on the subscriber: {problems}")
    say(f"self-test: a row added on the subscriber alone is reported: {problems}")


def logical_experiment(sync: str | None, seed: int, duration: float, kinds: tuple[str, ...] | None = None,
                       writers: int = 2, log: Callable[[str], None] = print,
                       source_bin: Path | None = None) -> LogicalOutcome:
    """`source_bin`: the source on those PostgreSQL binaries (Debian's 15) instead of the embedded
    18, with a logical gate on every source node and the subscription through them."""
    lines: list[str] = []

    def say(text: str) -> None:
        lines.append(text)
        log(text)

    with Network() as net:
        cl = FaultCluster(net, sync=sync, log=say, bin_dir=source_bin, gate=source_bin is not None)
        cl.settings = seed_settings(sync, LOGICAL)
        steps = draw(seed, duration, cl.ttl, kinds if kinds is not None else kinds_for("etcd"))
        out = LogicalOutcome(seed, sync, steps)
        only = f" --fault-kinds {','.join(kinds)}" if kinds is not None else ""
        mode = ("logical-15-gate-" if source_bin is not None else "logical-") + \
            ("sync-on" if sync else "async")
        say(f"logical fault schedule seed {seed} (replay: pytest -m fault_run tests/faults/test_faults.py "
            f"-k {mode} --seed {seed} --duration {duration:g}{only}), synchronous_mode {sync or 'off'}, "
            f"ttl {cl.ttl:g}s, network 10.77.{net.octet}.0/24, dir {cl.dir}")
        for s in steps:
            say(f"  {s.describe()}")
        nemesis = Nemesis(cl, log=say)
        sub = Cluster("flsub", nodes=2, sets=LOGICAL, directory=cl.dir / "subscriber")
        keep = True
        try:
            t0 = time.monotonic()
            cl.start()
            sub.up()
            say(f"source up (primary {cl.primary()}) and subscriber up (primary {sub.wait_primary()}) "
                f"in {time.monotonic() - t0:.1f}s")
            if sync:
                _wait_sync_standby(cl)
            work = Workload(cl.dsn(), writers=writers, max_seconds=3 * duration + 900)
            work.prepare()
            _wait(lambda: all(cl.has_table(n, TABLE) for n in cl.names), 30, f"{TABLE} on every node")
            pair = LogicalPair(cl, sub, say)
            pair.subscribe()
            work.start()
            try:
                _wait(lambda: work.progress() > 20, 30, "writes flowing before the first fault")
                check(pair, work, out, "the start")
                self_test(pair, work, say)
                last = [cl.wait_primary(20.0)]

                def observe(where: str) -> None:
                    """Count a change of source primary since the last look (also one that came
                    after a step had settled, during its checks)."""
                    now = cl.wait_primary(20.0)
                    if now is not None and last[0] is not None and now != last[0]:
                        out.failovers += 1
                        nemesis.note(f"source failover {out.failovers}: {last[0]} -> {now} ({where})")
                    last[0] = now or last[0]
                end_by = time.monotonic() + duration
                for step in steps:
                    if time.monotonic() >= end_by:
                        nemesis.note(f"time is up: {len(steps) - step.index + 1} step(s) not run")
                        break
                    observe(f"before step {step.index}")
                    nemesis.step(step)
                    out.faults += 1
                    observe(f"step {step.index}")
                    check(pair, work, out, f"step {step.describe()}")
                observe("the end")
                nemesis.ensure_healed()
                out.not_converged = cl.wait_converged(FINAL_CONVERGENCE)
                check(pair, work, out, "the end")
            finally:
                work.stop()
            gone = tampered(cl.dir, cl.names)
            if gone:
                raise RuntimeError(f"the test directory was changed from outside during the run "
                                   f"(missing {gone}); the run proves nothing either way")
            acks = work.acks
            out.acks = len(acks)
            # The source's own promises, as in run.py: one writer at a time; in synchronous mode
            # no acknowledged commit lost.
            out.violations += [f"seed {seed}: {v.kind}: {v.detail}" for v in checker.concurrent_writers(acks)]
            final = cl.wait_primary(10.0)
            if sync and final is not None:
                out.violations += [f"seed {seed}: {v.kind}: {v.detail}" for v in
                                   checker.lost_commits(acks, cl.present_ids(final, TABLE))]
            say(f"logical run: {out.faults} faults, {out.failovers} source failovers, {out.passed}/"
                f"{out.checks} exact-rows checks passed, {out.acks} acknowledged commits "
                f"({out.async_lost} of them lost by the source: the subscriber must lack them too), longest "
                f"slot catch-up {out.longest_catch_up:.1f}s, longest slot_on_candidates wait "
                f"{out.longest_candidates:.1f}s")
            for v in out.violations:
                say(f"VIOLATION {v}")
            keep = end_of_run(cl, out.not_converged, out.ok, say)
        finally:
            write_report(cl, lines)
            sub.down()
            cl.close(keep=keep)
    out.report = "\n".join(lines)
    return out
