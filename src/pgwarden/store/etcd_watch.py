"""The etcd backend's watch: a thread streaming the events under the cluster key, and the change
tracking `wait_for_change` answers from (which revisions count, which this instance wrote)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from typing import Any

from pgwarden.store.base import Layout, StoreUnavailable
from pgwarden.store.etcd_gateway import _UNAUTHENTICATED, _b64, _Gateway, _int, _range_end, _unb64
from pgwarden.store.http_conns import Stream, StreamIdle

# The name the etcd backend's log lines have always carried.
log = logging.getLogger("pgwarden.store.etcd")

# A watch stream that stays silent this long is reopened (from the next revision, so nothing is
# lost): a stream to a frozen or partitioned server would otherwise hang forever unnoticed.
_WATCH_IDLE = 10.0
_WATCH_CONNECT = 2.0
_WATCH_BACKOFF_MAX = 2.0


class _WatchReset(Exception):
    """The watch must start over from the current revision (its resume point was compacted)."""


class EtcdWatch:
    """The watch half of `EtcdKV` (its base class; see there for what counts as a change)."""

    # Set by EtcdKV.__init__ before it calls _init_watch.
    cluster: str
    hosts: list[str]
    _layout: Layout
    _base: bytes
    _gw: _Gateway
    _lock: threading.Lock  # guards the lease table, and starting the watch thread

    def _init_watch(self) -> None:
        # Change tracking shared with the watch thread (all under _cond).
        self._cond = threading.Condition()
        self._seen_rev = 0  # changes up to here are known to the caller
        self._changes: list[int] = []  # revisions of relevant events seen by the watch
        self._own: set[int] = set()  # revisions of writes this instance made
        self._lost = False  # the watch may have missed events
        self._woken = False  # interrupt() asked the waiter to return
        self._stop = threading.Event()
        self._watch: threading.Thread | None = None
        self._watch_stream: Stream | None = None
        self._watch_next: int | None = None  # revision the watch resumes from

    def _note_own(self, resp: Mapping[str, Any], changed: bool) -> None:
        if not changed:
            return
        rev = _int(resp.get("header", {}).get("revision"))
        with self._cond:
            self._own.add(rev)
            if len(self._own) > 4096:  # nobody waits for changes; don't grow without bound
                self._own = set(sorted(self._own)[-1024:])

    # -- waiting for changes -------------------------------------------------------------------
    def _pending(self) -> bool:
        return self._lost or any(r > self._seen_rev and r not in self._own for r in self._changes)

    def _prune(self) -> None:
        self._changes = [r for r in self._changes if r > self._seen_rev]
        self._own = {r for r in self._own if r > self._seen_rev}

    def wait_for_change(self, timeout: float) -> bool:
        self._ensure_watch()
        with self._cond:
            self._cond.wait_for(lambda: self._woken or self._pending(), timeout=max(0.0, timeout))
            self._woken = False
            if not self._pending():
                return False
            self._seen_rev = max([self._seen_rev, *self._changes])
            self._lost = False
            self._prune()
            return True

    interruptible = True

    def interrupt(self) -> None:
        with self._cond:  # reentrant: safe from a signal handler of the waiting thread
            self._woken = True
            self._cond.notify_all()

    def _ensure_watch(self) -> None:
        with self._lock:
            if self._watch is not None or self._stop.is_set():
                return
            with self._cond:
                self._watch_next = self._seen_rev + 1 if self._seen_rev else None
            self._watch = threading.Thread(
                target=self._watch_loop, name=f"etcd-watch-{self.cluster}", daemon=True
            )
            self._watch.start()

    def _watch_loop(self) -> None:
        backoff = 0.1
        first = True
        while not self._stop.is_set():
            index, url = self._gw.current()
            try:
                self._watch_once(index, mark_lost=not first)
                backoff = 0.1
            except Exception as e:  # any failure: reconnect, maybe elsewhere
                if self._stop.is_set():
                    break
                log.debug("etcd: watch on %s ended: %s", url, e)
                if not isinstance(e, StreamIdle | _WatchReset):  # not the host's fault
                    self._gw.failed(index)
                if self._stop.wait(backoff):
                    break
                backoff = min(backoff * 2, _WATCH_BACKOFF_MAX)
            first = False

    def _watch_once(self, index: int, mark_lost: bool) -> None:
        """One watch stream on host `index`, on a connection of its own written out as the
        gateway's calls are (store/http_conns.py): a stream silent for _WATCH_IDLE is reopened,
        and through urllib3 each reopening cost about 1.5 ms of CPU, six a minute (issue 16)."""
        create: dict[str, Any] = {"key": _b64(self._base), "range_end": _b64(_range_end(self._base))}
        if self._watch_next is not None:
            create["start_revision"] = str(self._watch_next)
        stream = self._gw.open_stream(index, "/v3/watch", {"create_request": create}, _WATCH_CONNECT,
                                      _WATCH_IDLE)
        self._watch_stream = stream
        try:
            if self._stop.is_set():
                return
            if stream.status != 200:
                raise StoreUnavailable(f"watch: HTTP {stream.status}")
            buf = b""
            for chunk in stream.chunks(_WATCH_IDLE):
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        self._on_watch_message(json.loads(line), mark_lost)
            raise StoreUnavailable("watch stream closed by the server")
        finally:
            self._watch_stream = None
            stream.close()

    def _on_watch_message(self, msg: Mapping[str, Any], mark_lost: bool) -> None:
        if "error" in msg:
            err = msg["error"]
            if isinstance(err, Mapping) and _int(err.get("grpc_code")) == _UNAUTHENTICATED:
                self._gw.forget_token()  # expired: the reconnect authenticates again
            raise StoreUnavailable(f"watch: {err}")
        res = msg.get("result", {})
        if res.get("compact_revision") or res.get("canceled"):
            # Our resume point was compacted away: start afresh and assume we missed something.
            self._watch_next = None
            with self._cond:
                self._lost = True
                self._cond.notify_all()
            raise _WatchReset(f"watch canceled: {res.get('cancel_reason') or 'compacted'}")
        if res.get("created"):
            if self._watch_next is None:
                self._watch_next = _int(res.get("header", {}).get("revision")) + 1
                if mark_lost:  # a reconnect from "now": whatever happened meanwhile is unknown
                    with self._cond:
                        self._lost = True
                        self._cond.notify_all()
            return
        events = res.get("events") or []
        if not events:
            return
        relevant: list[int] = []
        last = 0
        base = self._base.decode()
        for ev in events:
            kv = ev.get("kv", {})
            rev = _int(kv.get("mod_revision"))
            last = max(last, rev)
            rel = _unb64(kv.get("key")).removeprefix(base)
            refresh = ev.get("type", "PUT") == "PUT" and _int(kv.get("version")) > 1
            if refresh and self._layout.in_dir(rel):
                continue
            if rel in self._layout.quiet:
                # The leader rewrites its optime every loop: waking every replica for it would
                # give each an extra loop a second (issue 16), and ZooKeeper never watches these.
                continue
            relevant.append(rev)
        self._watch_next = last + 1
        if relevant:
            with self._cond:
                self._changes.extend(relevant)
                self._cond.notify_all()

    def _stop_watch(self) -> None:
        """Stop the watch thread and wake anyone waiting for a change."""
        self._stop.set()
        stream = self._watch_stream
        if stream is not None:
            stream.shutdown()  # unblocks the watch thread's read
        thread = self._watch
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=1.0)
        with self._cond:
            self._cond.notify_all()
