"""A KV that times every request of another and reports it (operation, seconds, succeeded) to a
callback: the store latency and error metrics, without touching the backends. `wait_for_change`
blocks by design and is not timed."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TypeVar

from pgwarden.store.base import KV, AnyVersion, Entry, Version

T = TypeVar("T")
Report = Callable[[str, float, bool], None]


class TimedKV(KV):
    def __init__(self, inner: KV, report: Report) -> None:
        self.inner = inner
        self.cluster = inner.cluster
        self.take_over_agreed = inner.take_over_agreed
        self.interruptible = inner.interruptible
        self._report = report

    def _timed(self, op: str, call: Callable[[], T]) -> T:
        started = time.monotonic()
        ok = False
        try:
            result = call()
            ok = True
            return result
        finally:
            self._report(op, time.monotonic() - started, ok)

    def read(self, timeout: float) -> Mapping[str, Entry]:
        return self._timed("read", lambda: self.inner.read(timeout))

    def wait_for_change(self, timeout: float) -> bool:
        return self.inner.wait_for_change(timeout)

    def interrupt(self) -> None:
        self.inner.interrupt()

    def put(self, key: str, value: str, version: Version, timeout: float, ttl: float | None = None) -> bool:
        return self._timed("put", lambda: self.inner.put(key, value, version, timeout, ttl))

    def delete(self, key: str, version: str | AnyVersion, timeout: float) -> bool:
        return self._timed("delete", lambda: self.inner.delete(key, version, timeout))

    def acquire(self, key: str, value: str, ttl: float, timeout: float, strict: bool = True) -> bool:
        return self._timed("acquire", lambda: self.inner.acquire(key, value, ttl, timeout, strict))

    def renew(
        self, key: str, value: str, ttl: float, timeout: float, strict: bool = True, adopt: bool = False
    ) -> bool:
        return self._timed("renew", lambda: self.inner.renew(key, value, ttl, timeout, strict, adopt))

    def take_over(
        self, key: str, value: str, version: str, ttl: float, timeout: float,
        also: Mapping[str, tuple[str, Version]] | None = None,
    ) -> bool:
        return self._timed("take_over", lambda: self.inner.take_over(key, value, version, ttl, timeout, also))

    def release(self, key: str, value: str, timeout: float) -> bool:
        return self._timed("release", lambda: self.inner.release(key, value, timeout))

    def close(self) -> None:
        self.inner.close()
