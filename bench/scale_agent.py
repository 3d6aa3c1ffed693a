"""The simulated agents of the store scale benchmark (`bench/scale.py`): each drives the real
`ClusterStore` over the real etcd or ZooKeeper `KV`, loop for loop as `agent/runner.py` does at
steady state, with PostgreSQL replaced by a generator of WAL positions (moving every loop, or standing still
with `idle`: a cluster taking no writes).

Per loop (runner.loop_once + executor, a healthy cluster with nothing to change):
  every member: one snapshot read; its member key published (a ttl put: renews the key's lease);
  the leader, in between: its lease renewed (RenewLease), and after publishing its optime (when
  it moved since the snapshot);
  then every member waits out the loop in `wait_for_change`, waking early on news (runner._wait).
Bootstrap (once, not measured): the init lock, the system id, the seeded settings, the leader
key, and the synchronous and failsafe documents a cluster in those modes keeps.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from bench.scale_stats import RenewalBook
from pgwarden import __version__
from pgwarden.config.schema import ClusterSettings
from pgwarden.core.model import MemberInfo, Role, SyncState
from pgwarden.store.base import StoreError
from pgwarden.store.cluster import ClusterStore
from pgwarden.store.documents import LAYOUT
from pgwarden.store.timed import TimedKV

MEMBERS = 3
WAIT_SLICE = 0.5  # runner._wait asks the store for changes in slices of at most this long
BOOTSTRAP_CALL = 10.0  # seconds: one bootstrap call's deadline


def cpu_seconds(pid: int | str = "self") -> float:
    """utime + stime of one process from /proc/PID/stat (children not included)."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Window:
    """The measurement window (monotonic seconds, the same clock in every process on Linux)."""

    start: float = float("inf")
    end: float = float("inf")

    def inside(self, t: float) -> bool:
        return self.start <= t < self.end


@dataclass
class Tally:
    """What one worker process measured inside the window (sent back to the parent as a dict)."""

    latencies: dict[str, list[float]] = field(default_factory=dict)  # op -> seconds
    failed: Counter[str] = field(default_factory=Counter)  # op -> calls that raised
    errors: Counter[str] = field(default_factory=Counter)  # exception text (first words) -> count
    loops: int = 0
    early_wakes: int = 0  # loops started early because wait_for_change saw news
    lateness: list[float] = field(default_factory=list)  # loop start behind its schedule, s
    renewals: int = 0
    missed: int = 0

    def merge(self, other: Tally) -> None:
        for op, seconds in other.latencies.items():
            self.latencies.setdefault(op, []).extend(seconds)
        self.failed.update(other.failed)
        self.errors.update(other.errors)
        self.loops += other.loops
        self.early_wakes += other.early_wakes
        self.lateness.extend(other.lateness)
        self.renewals += other.renewals
        self.missed += other.missed

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the queue back to the parent process."""
        return {"latencies": self.latencies, "failed": dict(self.failed), "errors": dict(self.errors),
                "loops": self.loops, "early_wakes": self.early_wakes, "lateness": self.lateness,
                "renewals": self.renewals, "missed": self.missed}

    def report(self, window: Window) -> Any:
        def record(op: str, seconds: float, ok: bool) -> None:
            if not window.inside(time.monotonic() - seconds):
                return
            if ok:
                self.latencies.setdefault(op, []).append(seconds)  # list.append: atomic in CPython
            else:
                self.failed[op] += 1
        return record


def open_kv(store: str, endpoint: str, cluster: str) -> Any:
    if store == "etcd":
        from pgwarden.store.etcd import EtcdKV

        return EtcdKV([endpoint], cluster, LAYOUT, "/pgwarden-scale")
    from pgwarden.store.zookeeper import ZooKeeperKV

    return ZooKeeperKV([endpoint], cluster, LAYOUT, "/pgwarden-scale")


class SimAgent:
    """One member of one cluster. Member 0 bootstraps and leads; the others are replicas."""

    def __init__(self, store: str, endpoint: str, cluster: str, index: int, settings: ClusterSettings,
                 window: Window, stop_at: list[float], idle: bool = False) -> None:
        self.name = f"node{index}"
        self.cluster = cluster
        self.leader = index == 0
        self.s = settings
        self.window = window
        self.tally = Tally()  # this agent's own: merged by the worker once every thread ended
        self.stop_at = stop_at  # [monotonic]; a list so the worker can set it after starting us
        self.store = ClusterStore(TimedKV(open_kv(store, endpoint, cluster), self.tally.report(window)))
        self.book = RenewalBook(settings.ttl)
        self.rng = random.Random(f"{cluster}/{index}")
        self.lsn = 0x3000000 + self.rng.randrange(1 << 20)
        self.ready = threading.Event()
        self.idle = idle  # positions stand still (no writes on the primary)
        self.api_url = f"https://10.0.0.{self.rng.randrange(2, 250)}:8008"

    # -- PostgreSQL, replaced by a generator of positions -------------------------------------
    def _position(self) -> MemberInfo:
        if not self.idle:
            self.lsn += self.rng.randrange(1, 64 * 1024)  # some writes every loop
        behind = 0 if self.leader or self.idle else self.rng.randrange(0, 8 * 1024)
        lsn = self.lsn - behind
        return MemberInfo(
            name=self.name, api_url=self.api_url,
            host=f"{self.cluster}-{self.name}.example", port=5432,
            role=Role.PRIMARY if self.leader else Role.REPLICA, state="running", running=True,
            timeline=1, lsn=lsn, received_lsn=None if self.leader else lsn,
            replayed_lsn=None if self.leader else lsn, upstream=None if self.leader else "node0",
            streaming=not self.leader, agent_pid=os.getpid(), postmaster_pid=os.getpid(),
            version=__version__, pg_version=180000,
        )

    # -- bootstrap (not measured) --------------------------------------------------------------
    def bootstrap(self, deadline: float, gate: threading.Semaphore) -> None:
        # Generous deadlines, a few agents at a time: hundreds of agents starting in the same
        # second is not what is measured (real ones start one node at a time), and a ZooKeeper
        # session opened under that rush can take longer than retry_timeout to be granted.
        t = max(BOOTSTRAP_CALL, self.s.retry_timeout)
        while time.monotonic() < deadline:
            try:
                with gate:
                    self._bootstrap_once(t)
                return
            except StoreError:
                time.sleep(0.2)  # the store is busy with everyone else's bootstrap: try again
        raise RuntimeError(f"{self.cluster}/{self.name}: bootstrap did not finish in time")

    def _bootstrap_once(self, t: float) -> None:
        if self.leader:
            self.store.take_init_lock(self.name, self.s.ttl, t)
            self.store.set_initialized(f"{7000000000000000000 + self.rng.randrange(1 << 40)}", t)
            self.store.set_settings(self.s, None, t)
            if not self.book.lease.held:
                sent = time.monotonic()
                if self.store.acquire_leader(self.name, self.s.ttl, t) or \
                        self.store.renew_leader(self.name, self.s.ttl, t):
                    self.book.acquired(sent)
            members = frozenset(f"node{i}" for i in range(MEMBERS))
            view = self.store.snapshot(t)
            self.store.set_sync(SyncState(self.name, frozenset({"node1"}), 1),
                                view.sync.token if view.sync is not None else None, t)
            self.store.set_failsafe_members(members, view.failsafe_token, t)
            self.store.release_init_lock(self.name, t)
        self.store.publish_member(self._position(), self.s.ttl, t)
        self.store.snapshot(t)

    # -- the loop ------------------------------------------------------------------------------
    def run(self, first_delay: float) -> None:
        time.sleep(first_delay)  # loops are spread over loop_wait, as independent agents' are
        planned = time.monotonic()
        while True:
            started = time.monotonic()
            if started >= self.stop_at[0]:
                return
            if self.window.inside(started):
                self.tally.loops += 1
                self.tally.lateness.append(max(0.0, started - planned))
            try:
                self.loop_once(started)
            except StoreError as e:
                if self.window.inside(started):
                    self.tally.errors[str(e).split(":")[0][:60]] += 1
            planned = started + self.s.loop_wait
            if self._wait(started) and self.window.inside(started):
                self.tally.early_wakes += 1
                planned = time.monotonic()

    def loop_once(self, now: float) -> None:
        s = self.s
        measured = self.window.inside(now)
        if self.leader and self.book.lapsed(now) and measured:
            self.tally.missed += 1
        view = self.store.snapshot(self.book.call_timeout(now, s.retry_timeout))
        if self.leader:
            self._renew(measured)
        info = self._position()
        t = self.book.call_timeout(time.monotonic(), s.retry_timeout)
        self.store.publish_member(info, s.ttl, t)
        if self.leader and self.book.lease.held and info.lsn is not None and info.lsn != view.leader_lsn:
            self.store.set_optime(info.lsn, t)  # as runner._publish_member: only when it moved

    def _renew(self, measured: bool) -> None:
        s = self.s
        sent = time.monotonic()
        missed_before = self.book.missed
        ok = False
        try:
            ok = self.store.renew_leader(self.name, s.ttl, self.book.call_timeout(sent, s.retry_timeout))
            if not ok and not self.book.lease.held:
                # The key lapsed (a miss already counted): the leader takes it again, as a
                # replica would in the real cluster, so later loops measure renewals again.
                ok = self.store.acquire_leader(self.name, s.ttl, s.retry_timeout)
        finally:
            self.book.renewal(sent, time.monotonic(), ok)
            if measured:
                self.tally.renewals += 1
                self.tally.missed += self.book.missed - missed_before

    def _wait(self, started: float) -> bool:
        """runner._wait: out the rest of loop_wait in slices of wait_for_change; True if news
        ended it early."""
        deadline = started + self.s.loop_wait
        while True:
            left = min(deadline, self.stop_at[0]) - time.monotonic()
            if left <= 0:
                return False
            try:
                if self.store.wait_for_change(min(left, WAIT_SLICE)):
                    return True
            except StoreError:
                time.sleep(min(left, 0.2))

    def close(self) -> None:
        self.store.close()
