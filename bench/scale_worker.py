"""One worker process of the store scale benchmark: a thread per simulated agent for its share
of the clusters (`bench/scale_agent.py`), its tallies sent back to `bench/scale.py`.

Several processes, because one Python process runs one thread at a time: hundreds of agents in
one interpreter would wait on each other for the GIL and that wait would be counted as store
latency. A real agent is a process of its own with a handful of threads."""

from __future__ import annotations

import logging
import threading
import time
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from typing import Any

from bench.scale_agent import MEMBERS, SimAgent, Tally, Window, cpu_seconds
from pgwarden.config.schema import ClusterSettings

BOOTSTRAP_TIMEOUT = 300.0
PROBE_SLEEP = 0.01
BOOTSTRAP_CONCURRENCY = 8  # agents of one worker bootstrapping at the same time


def _probe(window: Window, oversleep: list[float]) -> None:
    """How late this process's threads wake: a sleep of 10 ms, over and over, and how much longer
    it took. Waiting for a core (the machine busy) or for the GIL (the worker busy) shows here,
    and the same wait sits inside every latency this worker measured."""
    time.sleep(max(0.0, window.start - time.monotonic()))
    while (t0 := time.monotonic()) < window.end:
        time.sleep(PROBE_SLEEP)
        oversleep.append(time.monotonic() - t0 - PROBE_SLEEP)


def run_worker(worker: int, store: str, endpoint: str, clusters: list[str],
               timing: tuple[float, float, float], ready: Queue[Any], results: Queue[Any], go: Event,
               bounds: Any, idle: bool = False) -> None:
    """Bootstrap and run the agents of `clusters`; once `go` is set, measure inside the window
    `bounds` ([start, end] monotonic) and put one dict of tallies on `results`."""
    ttl, loop_wait, retry_timeout = timing
    # kazoo logs every dropped connection and expired session; the tallies count what failed,
    # and hundreds of clients reconnecting at teardown would bury the report.
    logging.getLogger("kazoo").setLevel(logging.CRITICAL)
    settings = ClusterSettings(ttl=ttl, loop_wait=loop_wait, retry_timeout=retry_timeout)
    window = Window()
    stop_at = [float("inf")]
    agents = [SimAgent(store, endpoint, c, i, settings, window, stop_at, idle)
              for c in clusters for i in range(MEMBERS)]
    failures: list[str] = []
    deadline = time.monotonic() + BOOTSTRAP_TIMEOUT

    gate = threading.Semaphore(BOOTSTRAP_CONCURRENCY)

    def life(agent: SimAgent, first_delay: float) -> None:
        try:
            agent.bootstrap(deadline, gate)
        except Exception as e:
            failures.append(f"{agent.cluster}/{agent.name}: {e}")
            return
        finally:
            agent.ready.set()
        agent.run(first_delay)

    threads = []
    for n, agent in enumerate(agents):
        # Spread the loops over loop_wait, as independent agents' are.
        t = threading.Thread(target=life, args=(agent, (n * 0.618) % 1.0 * loop_wait),
                             name=f"{agent.cluster}/{agent.name}", daemon=True)
        t.start()
        threads.append(t)
    for agent in agents:
        agent.ready.wait(max(0.0, deadline - time.monotonic()))
    ready.put((worker, failures[:5] if failures else None))
    if failures:
        stop_at[0] = 0.0
        return
    go.wait()
    start, end = float(bounds[0]), float(bounds[1])
    window.end, window.start = end, start
    stop_at[0] = end
    oversleep: list[float] = []
    probe = threading.Thread(target=_probe, args=(window, oversleep), daemon=True)
    probe.start()
    time.sleep(max(0.0, start - time.monotonic()))
    cpu0 = cpu_seconds()
    time.sleep(max(0.0, end - time.monotonic()))
    cpu1 = cpu_seconds()
    join_by = end + loop_wait + 3 * retry_timeout + 5.0
    for t in threads:
        t.join(max(0.0, join_by - time.monotonic()))
    total = Tally()
    for agent in agents:
        total.merge(agent.tally)
    out = total.to_dict()
    out.update(worker=worker, cpu_s=cpu1 - cpu0, oversleep=oversleep, threads=threading.active_count(),
               stuck=sum(t.is_alive() for t in threads))
    results.put(out)
    def close_all() -> None:
        for a in agents:
            a.close()

    closer = threading.Thread(target=close_all, daemon=True)
    closer.start()
    closer.join(10.0)  # closing hundreds of sessions may take a while; leases lapse by themselves
