"""The ZooKeeper backend's reading session: its watches on the cluster's keys, the change tracking
`wait_for_change` answers from, and the persistent-key requests, whose answers feed that tracking."""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError
from kazoo.protocol.states import EventType, WatchedEvent, ZnodeStat

from pgwarden.store.base import Layout, StoreUnavailable
from pgwarden.store.zookeeper_session import _await, _retry

# The name the ZooKeeper backend's log lines have always carried.
log = logging.getLogger("pgwarden.store.zookeeper")

# The reading session holds no ephemeral node, so its length only bounds how long its watches
# survive a partition; the server clamps it to its min/max anyway.
_MAIN_SESSION = 10.0


class ZooKeeperWatch:
    """The reading session of `ZooKeeperKV` (its base class): one ordinary session through which
    persistent keys are read, written and watched (see the store's class doc).

    What is watched (`_watched`): the layout's keys, except the quiet ones (the leader rewrites
    `optime` every loop), each by an exists watch; and its directories, each by a child watch,
    which wakes on joins and leaves only, never on a member's refresh."""

    # Set by ZooKeeperKV.__init__ before it calls _init_watch.
    hosts: str
    _base: str
    _layout: Layout
    _lock: threading.Lock  # guards the lease fields, and starting the reading session
    _closed: bool
    _auth: dict[str, Any]  # KazooClient arguments for digest authentication (or none)

    def _init_watch(self) -> None:
        layout = self._layout
        self._watched = tuple(k for k in layout.keys if k not in layout.quiet) + layout.dirs
        self._cond = threading.Condition()  # guards the watch state below
        self._seq = 0
        self._applied: dict[str, int] = {}
        self._latest: dict[str, int] = {}  # rel -> mzxid (pzxid for a directory), 0 = absent
        self._known: dict[str, int] = {}  # the same, as the caller last saw it
        self._lost = False
        self._woken = False  # interrupt() asked the waiter to return
        self._main = KazooClient(hosts=self.hosts, timeout=_MAIN_SESSION, connection_retry=_retry(),
                                 **self._auth)
        self._main_live = threading.Event()
        self._main.add_listener(self._on_main_state)
        self._main_started = False

    def _path(self, rel: str) -> str:
        return f"{self._base}/{rel}"

    # -- the reading session and its watches ---------------------------------------------------
    def _on_main_state(self, state: str) -> None:
        # kazoo drops every watch when the connection drops, so re-arm on each (re)connect.
        if state == KazooState.CONNECTED:
            self._main_live.set()
            for rel in self._watched:
                self._arm(rel)
            return
        self._main_live.clear()
        with self._cond:
            self._lost = True
            self._cond.notify_all()

    def _start_main(self) -> None:
        with self._lock:
            if self._main_started or self._closed:
                return
            self._main_started = True
        self._main.start_async()

    def _client(self, deadline: float) -> KazooClient:
        self._start_main()
        if not self._main_live.wait(max(deadline - time.monotonic(), 0.0)):
            raise StoreUnavailable("zookeeper: no connection within the deadline")
        return self._main

    def _issue(self, rel: str | None, call: Callable[[], Any], value: Callable[[Any], int]) -> Any:
        """Send one request on the reading session. If `rel` is watched, its answer (turned into
        an mzxid by `value`) updates `_latest`, in the order the requests were sent: one session's
        answers come in that order, so the highest sequence number is the newest state."""
        if rel not in self._watched:
            return call()
        with self._cond:
            self._seq += 1
            seq = self._seq
            result = call()
        result.rawlink(functools.partial(self._observed, rel, seq, value))
        return result

    def _observed(self, rel: str, seq: int, value: Callable[[Any], int], result: Any) -> None:
        try:
            v = value(result.get(block=False))
        except NoNodeError:
            v = 0
        except Exception:  # a lost connection: the re-arm after reconnecting reads again
            return
        with self._cond:
            if seq <= self._applied.get(rel, 0):
                return
            self._applied[rel] = seq
            self._latest[rel] = v
            self._known.setdefault(rel, v)  # the state a watch starts from counts as seen
            self._cond.notify_all()

    def _on_watch(self, event: WatchedEvent) -> None:
        if event.type == EventType.NONE or not event.path:
            return  # a connection event: _on_main_state re-arms
        rel = event.path.removeprefix(self._base + "/")
        if rel in self._watched:
            self._arm(rel)

    def _arm(self, rel: str) -> None:
        path = self._path(rel)
        try:
            if rel in self._layout.dirs:
                r = self._issue(
                    rel,
                    lambda: self._main.get_children_async(path, watch=self._on_watch, include_data=True),
                    lambda v: int(v[1].pzxid),
                )
                r.rawlink(functools.partial(self._dir_missing, rel))
            else:
                self._issue(
                    rel,
                    lambda: self._main.exists_async(path, watch=self._on_watch),
                    lambda v: int(v.mzxid) if v is not None else 0,
                )
        except Exception as e:  # the client is stopping
            log.debug("zookeeper: arming a watch on %s: %s", path, e)

    def _dir_missing(self, rel: str, result: Any) -> None:
        # A child watch needs the node: until it exists, watch for its creation instead.
        if isinstance(result.exception, NoNodeError):
            path = self._path(rel)
            self._issue(
                rel,
                lambda: self._main.exists_async(path, watch=self._on_watch),
                lambda v: int(v.pzxid) if v is not None else 0,
            )

    def _saw(self, rel: str, value: int) -> None:
        """The caller knows `rel` is at `value` (it read or wrote it)."""
        if rel not in self._watched:
            return
        with self._cond:
            self._known[rel] = value

    def wait_for_change(self, timeout: float) -> bool:
        self._start_main()

        def pending() -> bool:
            return self._lost or any(self._known.get(r, v) != v for r, v in self._latest.items())

        with self._cond:
            self._cond.wait_for(lambda: self._woken or pending(), timeout=max(0.0, timeout))
            self._woken = False
            if not pending():
                return False
            self._known.update(self._latest)
            self._lost = False
            return True

    interruptible = True

    def interrupt(self) -> None:
        with self._cond:  # reentrant: safe from a signal handler of the waiting thread
            self._woken = True
            self._cond.notify_all()

    # -- persistent keys -----------------------------------------------------------------------
    def _create(self, rel: str, value: str, deadline: float) -> bool:
        """Create-only; False if the node exists."""
        zk = self._client(deadline)
        path = self._path(rel)
        r = self._issue(
            rel,
            lambda: zk.create_async(path, value.encode(), makepath=True, include_data=True),
            lambda v: int(v[1].mzxid),
        )
        try:
            _, stat = _await(r, deadline)
        except NodeExistsError:
            return False
        self._saw(rel, int(stat.mzxid))
        return True

    def _set(self, rel: str, value: str, version: int, deadline: float) -> bool:
        """Write if the node is at `version` (-1: any); False if it is not, or is gone."""
        zk = self._client(deadline)
        path = self._path(rel)
        r = self._issue(rel, lambda: zk.set_async(path, value.encode(), version), lambda v: int(v.mzxid))
        try:
            stat = _await(r, deadline)
        except (BadVersionError, NoNodeError):
            return False
        self._saw(rel, int(stat.mzxid))
        return True

    def _put(self, rel: str, value: str, deadline: float) -> None:
        """Write whatever is there."""
        for _ in range(3):  # set, else create; a concurrent create/delete costs a retry
            if self._set(rel, value, -1, deadline) or self._create(rel, value, deadline):
                return
        raise StoreUnavailable(f"zookeeper: {self._path(rel)} kept changing under the write")

    def _delete(self, rel: str, deadline: float, version: int = -1) -> bool:
        zk = self._client(deadline)
        path = self._path(rel)
        r = self._issue(rel, lambda: zk.delete_async(path, version), lambda v: 0)
        try:
            _await(r, deadline)
        except (NoNodeError, BadVersionError):
            return False
        self._saw(rel, 0)
        return True

    def _get(self, rel: str, deadline: float) -> tuple[str, ZnodeStat] | None:
        zk = self._client(deadline)
        try:
            data, stat = _await(zk.get_async(self._path(rel)), deadline)
        except NoNodeError:
            return None
        return data.decode("utf-8", errors="replace"), stat
