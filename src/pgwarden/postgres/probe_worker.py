"""One kept thread that runs the loop's health query, so the loop can wait for it with a bound
(a frozen server never answers, and libpq's connect timeout cannot go below 2 s).

Before, every loop started a thread of its own for the query: starting and ending a thread is
about 0.1 ms of CPU, ten system calls (stack mapping, clone, robust list) and a cold stack, every
second (issue 16). The kept thread takes the same jobs from a queue; as before, at most one job is
in flight, and a job that has not finished blocks the next until it does.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Job(Generic[T]):
    """One call handed to the worker; `wait` for it, then read `value` or `error`."""

    __slots__ = ("_done", "_fn", "error", "finished", "value")

    def __init__(self, fn: Callable[[], T]) -> None:
        self._fn = fn
        self._done = threading.Lock()
        self._done.acquire()  # released by the worker when the call has returned or raised
        self.finished = False
        self.value: T | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.value = self._fn()
        except BaseException as e:  # handed to the waiter, as the per-loop thread did
            self.error = e
        finally:
            self.finished = True
            self._done.release()

    def wait(self, timeout: float) -> bool:
        """True once the call finished; False if it is still running after `timeout`."""
        if self.finished:
            return True
        return self._done.acquire(timeout=max(timeout, 0.0))


class ProbeWorker(Generic[T]):
    """Runs one job at a time on a kept daemon thread (started on first use, and again should it
    ever have ended)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue[Job[T]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._last: Job[T] | None = None

    def busy(self) -> bool:
        """The last job handed over has not finished (what it uses is still in use)."""
        with self._lock:
            return self._last is not None and not self._last.finished

    def submit(self, fn: Callable[[], T]) -> Job[T] | None:
        """Hand `fn` to the worker; None (and nothing handed over) while the last job runs."""
        with self._lock:
            if self._last is not None and not self._last.finished:
                return None
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._serve, name=self.name, daemon=True)
                self._thread.start()
            job = Job(fn)
            self._last = job
            self._jobs.put(job)
            return job

    def _serve(self) -> None:
        while True:
            self._jobs.get().run()
