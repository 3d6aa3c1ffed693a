"""Readings of the other sites (SAFETY rule 18, core/standby.py): GET /site on every REST API URL
the site document names, in a background thread so a partitioned site never slows the HA loop
(which renews the lease). The loop takes the latest readings; older than `max_age` they count
as unreachable, so a decision never rests on a stale "not writable"."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import urllib3

from pgwarden.core.model import SiteReading
from pgwarden.tls.contexts import ContextSource
from pgwarden.tls.http import FollowingPool

log = logging.getLogger("pgwarden.sites")


def combine(answers: list[dict[str, Any]]) -> tuple[SiteReading, ...]:
    """Per cluster: reachable when any member answered, writable when any runs a primary, the
    highest epoch any reported (the writable member's DSN preferred)."""
    by: dict[str, SiteReading] = {}
    for a in answers:
        name = str(a.get("cluster", ""))
        writable = bool(a.get("writable"))
        tl = a.get("timeline") if writable and isinstance(a.get("timeline"), int) else None
        r = SiteReading(name, True, int(a.get("epoch", 0)), writable, str(a.get("dsn", "")), tl,
                        bool(a.get("standby_of")))
        prev = by.get(name)
        if prev is None:
            by[name] = r
            continue
        by[name] = SiteReading(name, True, max(prev.epoch, r.epoch), prev.writable or r.writable,
                               r.dsn if r.writable or not prev.dsn else prev.dsn, r.timeline or prev.timeline,
                               prev.standby and r.standby)
    return tuple(by[k] for k in sorted(by))


class SiteProbe:
    """`on_change`: called (from the probe's thread) when a reading differs from the last one, so
    the HA loop can decide on it at once instead of at its next turn."""

    def __init__(self, on_change: Callable[[], None] | None = None, tls: ContextSource | None = None) -> None:
        self._on_change = on_change
        self._http = FollowingPool(tls, num_pools=16, maxsize=2, retries=False)
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="site")
        self._lock = threading.Lock()
        self._urls: tuple[str, ...] = ()
        self._interval = 1.0
        self._readings: tuple[SiteReading, ...] = ()
        self._at = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def want(self, urls: tuple[str, ...], interval: float) -> None:
        """Probe `urls` every `interval` seconds from now on (none: stop probing)."""
        with self._lock:
            self._urls, self._interval = urls, interval
        if urls and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="site-probe", daemon=True)
            self._thread.start()

    def latest(self, max_age: float) -> tuple[SiteReading, ...]:
        with self._lock:
            fresh = time.monotonic() - self._at <= max_age
            return self._readings if fresh else ()

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                urls, interval = self._urls, self._interval
            started = time.monotonic()
            if urls:
                readings = self.read(urls, min(1.0, interval))
                with self._lock:
                    changed = readings != self._readings
                    self._readings, self._at = readings, started
                if changed and self._on_change is not None:
                    self._on_change()
            self._stop.wait(max(0.05, interval - (time.monotonic() - started)))

    def read(self, urls: tuple[str, ...], timeout: float) -> tuple[SiteReading, ...]:
        futures = [self._pool.submit(self._one, u, timeout) for u in urls]
        answers = [a for f in futures if (a := f.result()) is not None]
        return combine(answers)

    def _one(self, url: str, timeout: float) -> dict[str, Any] | None:
        try:
            r = self._http.get().request("GET", url.rstrip("/") + "/site",
                                   timeout=urllib3.Timeout(total=timeout), preload_content=True)
            if r.status != 200:
                raise ValueError(f"HTTP {r.status}")
            d = json.loads(r.data)
            if not isinstance(d, dict):
                raise ValueError("not a JSON object")
            return d
        except Exception as e:
            log.debug("site %s unreachable: %s", url, e)
            return None

    def close(self) -> None:
        self._stop.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._http.clear()
