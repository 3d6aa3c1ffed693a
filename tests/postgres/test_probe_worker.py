"""postgres/probe_worker.py: jobs run on one kept thread, the waiter is bounded, and a job that has
not finished blocks the next (one health query in flight at a time)."""

from __future__ import annotations

import functools
import threading
import time

import pytest

from pgwarden.postgres.probe_worker import ProbeWorker


def test_jobs_run_on_one_kept_thread_and_return_their_values() -> None:
    worker: ProbeWorker[int] = ProbeWorker("test-probe")
    idents: list[int] = []

    def call(i: int) -> int:
        idents.append(threading.get_ident())
        return i

    for i in range(3):
        job = worker.submit(functools.partial(call, i))
        assert job is not None and job.wait(5)
        assert job.value == i and job.error is None
    assert len(set(idents)) == 1 and idents[0] != threading.get_ident()


def test_an_error_is_handed_to_the_waiter() -> None:
    worker: ProbeWorker[int] = ProbeWorker("test-probe")

    def fail() -> int:
        raise OSError("no answer")

    job = worker.submit(fail)
    assert job is not None and job.wait(5)
    assert isinstance(job.error, OSError) and job.value is None


def test_a_job_still_running_bounds_the_wait_and_blocks_the_next_until_it_ends() -> None:
    worker: ProbeWorker[str] = ProbeWorker("test-probe")
    release = threading.Event()
    stuck = worker.submit(lambda: "late" if release.wait(10) else "never")
    assert stuck is not None
    started = time.monotonic()
    assert not stuck.wait(0.2)
    assert 0.15 < time.monotonic() - started < 2.0
    assert worker.submit(lambda: "second") is None  # the frozen query still holds the thread
    release.set()
    assert stuck.wait(5) and stuck.value == "late"
    job = worker.submit(lambda: "third")
    assert job is not None and job.wait(5) and job.value == "third"


@pytest.mark.parametrize("timeout", [0.0, -1.0])
def test_no_time_left_still_sees_a_finished_job(timeout: float) -> None:
    worker: ProbeWorker[int] = ProbeWorker("test-probe")
    job = worker.submit(lambda: 7)
    assert job is not None and job.wait(5)
    assert job.wait(timeout) and job.value == 7


def test_busy_while_the_last_job_runs() -> None:
    worker: ProbeWorker[int] = ProbeWorker("test-probe")
    assert not worker.busy()
    release = threading.Event()
    job = worker.submit(lambda: int(release.wait(10)))
    assert job is not None and worker.busy()
    release.set()
    assert job.wait(5) and not worker.busy()
