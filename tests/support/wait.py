"""Wait on a condition with a deadline (tests never sleep a fixed time and hope)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(cond: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll `cond` until it returns something truthy; fail with `what` after `timeout` seconds.
    Exceptions from `cond` count as "not yet" (the last one is reported)."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            result = cond()
            if result:
                return result
        except Exception as e:  # the condition may fail while things start
            last_exc = e
        if time.monotonic() >= deadline:
            extra = f" (last error: {last_exc!r})" if last_exc else ""
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}{extra}")
        time.sleep(interval)
