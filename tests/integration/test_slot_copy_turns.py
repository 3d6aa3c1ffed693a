"""Standbys on PostgreSQL 15 take turns restarting to load their copies of a new logical slot
(core/slot_copies.turn_holder, rule 19): a slot created on a primary with two synchronous-mode
standbys never leaves the primary without a connected standby, where before both restarted in
the same second and the synchronous promise, and every read replica, went with them.

The primary's pg_stat_replication is sampled every 20 ms from before the slot is created until
both standbys hold their copy and stream again: at every sample at least one standby has a
walsender, and each standby's postmaster did restart (the test saw the restarts it guards).

And no commit waits for a standby that is down to load its copy (slot_copies.leaving_sync): the
standby whose turn it is leaves the synchronous standbys first. At every sample, each standby the
primary's synchronous_standby_names names has a walsender. Before, the synchronous standby's
restart held commits up until the leader noticed, a loop or more later."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import psycopg
import pytest

from tests.integration.test_logical import LOGICAL, PG15
from tests.support.cluster import Cluster
from tests.support.wait import wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not (Path(PG15) / "postgres").exists(),
                       reason=f"needs Debian's PostgreSQL 15 in {PG15} (apt install postgresql-15)"),
]
HAS_SLOT = "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'turns'"


@pytest.fixture(scope="module")
def src() -> Iterator[Cluster]:
    with Cluster("turns", nodes=3, sync="on", sets=LOGICAL, bin_dir=PG15) as c:
        c.wait_primary()
        yield c


def holds_copy(c: Cluster, node: str) -> bool:
    return c.sql(node, HAS_SLOT) == [(1,)]


class Sampler:
    """The standbys with a walsender on the primary, every 20 ms, on one kept connection; the
    loop ends on stop() or after `limit` seconds, whichever comes first."""

    def __init__(self, conninfo: str, limit: float) -> None:
        self.samples: list[frozenset[str]] = []
        self.waits_for: list[frozenset[str]] = []  # the names in synchronous_standby_names
        self.times: list[float] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(conninfo, limit), daemon=True)
        self._thread.start()

    def _run(self, conninfo: str, limit: float) -> None:
        end = time.monotonic() + limit
        try:
            with psycopg.connect(conninfo, autocommit=True) as conn:
                while not self._stop.is_set() and time.monotonic() < end:
                    # One statement, one snapshot: the setting this session runs and the walsenders.
                    row = conn.execute(
                        "SELECT current_setting('synchronous_standby_names'), "
                        "array(SELECT application_name FROM pg_stat_replication)").fetchone()
                    assert row is not None
                    self.waits_for.append(frozenset(re.findall(r'"([^"]+)"', row[0])))
                    self.samples.append(frozenset(row[1]))
                    self.times.append(time.time())
                    self._stop.wait(0.02)
        except BaseException as e:  # reported by stop(): a silent sampler would prove nothing
            self.error = e

    def stop(self) -> list[frozenset[str]]:
        self._stop.set()
        self._thread.join(10)
        assert self.error is None, f"sampling the primary failed: {self.error!r}"
        return self.samples


def test_standbys_restart_one_at_a_time_to_load_a_new_slots_copy(src: Cluster) -> None:
    primary = src.wait_primary()
    standbys = [n for n in src.names if n != primary]
    src.wait_replicas(standbys)
    wait_for(lambda: src.sql(primary, "SHOW synchronous_standby_names")[0][0] != "", 30,
             "a synchronous standby")
    pids = {n: src.postmaster_pid(n) for n in standbys}
    sampler = Sampler(src.conninfo(primary), limit=240)
    wait_for(lambda: len(sampler.samples) >= 5, 10, "the sampler's first samples")
    src.sql(primary, "SELECT pg_create_logical_replication_slot('turns', 'pgoutput')")
    try:
        for n in standbys:
            wait_for(partial(holds_copy, src, n), 120, f"{n} holding its copy")
        src.wait_replicas(standbys)
        wait_for(lambda: set(standbys) <= sampler.samples[-1], 60, "both standbys streaming again")
    finally:
        samples = sampler.stop()
    assert all(src.postmaster_pid(n) != pids[n] for n in standbys), \
        "a standby loaded its copy without restarting"
    changes = [(time.strftime("%H:%M:%S", time.localtime(t)) + f"{t % 1:.3f}"[1:], sorted(s))
               for i, (t, s) in enumerate(zip(sampler.times, samples, strict=False))
               if i == 0 or s != samples[i - 1]]
    gaps = [i for i, s in enumerate(samples) if not s & set(standbys)]
    assert not gaps, f"no standby connected in {len(gaps)} of {len(samples)} samples: {changes}"
    assert any(sampler.waits_for), "the primary never waited for a standby: nothing was tested"
    stalls = [(time.strftime("%H:%M:%S", time.localtime(t)) + f"{t % 1:.3f}"[1:], sorted(w - s))
              for t, w, s in zip(sampler.times, sampler.waits_for, samples, strict=True) if w - s]
    assert not stalls, f"the primary waited for a disconnected standby in {len(stalls)} samples: " \
                       f"{stalls[:10]}; connected: {changes}"
    src.sql(primary, "SELECT pg_drop_replication_slot('turns')")
