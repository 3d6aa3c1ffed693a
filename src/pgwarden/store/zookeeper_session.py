"""ZooKeeper sessions for the store: kazoo calls awaited within a deadline, clients stopped in the
background, and `_Lease`, a session that exists only to hold one lease's ephemeral nodes."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import (
    BadVersionError,
    ConnectionClosedError,
    ConnectionLoss,
    KazooException,
    NodeExistsError,
    NoNodeError,
    OperationTimeoutError,
    SessionExpiredError,
)
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.protocol.states import ZnodeStat
from kazoo.retry import KazooRetry
from kazoo.security import make_digest_acl

from pgwarden.store.base import StoreError, StoreUnavailable

# The name the ZooKeeper backend's log lines have always carried.
log = logging.getLogger("pgwarden.store.zookeeper")

# An abandoned lease session that never reports its end is torn down after this many ttls.
_ABANDON_CAP = 10.0

_UNAVAILABLE: tuple[type[BaseException], ...] = (
    KazooTimeoutError,
    ConnectionLoss,
    ConnectionClosedError,
    SessionExpiredError,
    OperationTimeoutError,
)
_EXPECTED: tuple[type[BaseException], ...] = (NoNodeError, NodeExistsError, BadVersionError)


def client_auth(credentials: tuple[str, str] | None) -> dict[str, Any]:
    """KazooClient arguments for digest authentication: the session authenticates as the user,
    and every node it creates (parents included) is readable and writable by that user only."""
    if credentials is None:
        return {}
    user, password = credentials
    return {"auth_data": [("digest", f"{user}:{password}")],
            "default_acl": [make_digest_acl(user, password, all=True)]}


def _retry() -> KazooRetry:
    # Reconnect forever, quickly: each store call has its own deadline, so a call never waits
    # on this schedule longer than it allows.
    return KazooRetry(max_tries=-1, delay=0.05, backoff=2, max_delay=0.5)


def _await(result: Any, deadline: float) -> Any:
    """The result of a kazoo async call, or StoreUnavailable once `deadline` passes."""
    remaining = deadline - time.monotonic()
    try:
        return result.get(timeout=max(remaining, 0.0))
    except _UNAVAILABLE as e:
        raise StoreUnavailable(f"zookeeper: {type(e).__name__}: {e}") from None
    except _EXPECTED:
        raise  # answers the callers turn into True/False
    except KazooException as e:
        raise StoreError(f"zookeeper: {type(e).__name__}: {e}") from e


def _stop_in_background(client: KazooClient) -> None:
    """Stop a client without holding up the caller (kazoo's stop joins its connection thread)."""

    def stop() -> None:
        try:
            client.stop()
            client.close()
        except Exception as e:  # best effort: the process may be exiting, the server gone
            log.debug("zookeeper: stopping a client: %s", e)

    threading.Thread(target=stop, name="zk-stop", daemon=True).start()


class _Lease:
    """One ZooKeeper session that exists only to hold ephemeral nodes for one lease.

    kazoo pings the server every third of the session timeout, so a session it keeps open never
    expires: an agent whose HA loop is stuck would keep its leader key forever. Here the client
    pings only while an answer is awaited (to notice a dead server); otherwise the server hears
    from the session only through our own calls, so its ephemeral nodes vanish `timeout` after
    the last call the server received (the store port's "ttl after the last renewal")."""

    def __init__(self, hosts: str, seconds: float, auth: dict[str, Any] | None = None) -> None:
        self.seconds = seconds
        self.negotiated = 0.0  # the session timeout the server granted, in seconds
        self.session: int | None = None  # the first session's id; a later one holds nothing
        self.lost = False
        self._done = threading.Event()
        self._live = threading.Event()
        self._started = False
        self.client = KazooClient(hosts=hosts, timeout=seconds, connection_retry=_retry(), **(auth or {}))
        self._quieten()
        self.client.add_listener(self._on_state)

    def _quieten(self) -> None:
        client = self.client
        conn = client._connection
        send_ping = conn._send_ping
        connect = conn._connect

        def _send_ping(connect_timeout: float) -> None:
            if client._pending:
                send_ping(connect_timeout)

        def _connect(host: str, hostip: str, port: int) -> tuple[float, float]:
            read_timeout, connect_timeout = connect(host, hostip, port)
            # kazoo keeps only read_timeout = negotiated * 2/3 (milliseconds).
            self.negotiated = round(read_timeout * 1.5) / 1000.0
            # Live only now: kazoo reports CONNECTED before it has sent the auth packets and
            # returned here, and a caller must not see the session before its length is known.
            if not self.lost and self.client._session_id == self.session:
                self._live.set()
            return read_timeout, connect_timeout

        conn._send_ping = _send_ping
        conn._connect = _connect

    def _on_state(self, state: str) -> None:
        # Runs on kazoo's connection thread: record only, never call kazoo from here.
        if state == KazooState.CONNECTED:
            sid = self.client._session_id
            if self.session is None:
                self.session = sid
            elif sid != self.session:
                self.lost = True
            return  # `_connect` sets `_live` once the handshake (auth included) is done
        self._live.clear()
        if state == KazooState.LOST and not self.lost:
            self.lost = True
            self._done.set()
            if self._started:
                _stop_in_background(self.client)

    def connect(self, deadline: float) -> KazooClient:
        if not self._started:
            self._started = True
            self.client.start_async()
        if not self._live.wait(max(deadline - time.monotonic(), 0.0)):
            raise StoreUnavailable("zookeeper: no connection within the deadline")
        return self.client

    def live(self) -> bool:
        return self._live.is_set()

    def owns(self, stat: ZnodeStat) -> bool:
        return not self.lost and self.session is not None and stat.ephemeralOwner == self.session

    def stop(self) -> None:
        """End the session now: the server deletes its ephemeral nodes at once."""
        self.lost = True
        self._done.set()
        if self._started:
            _stop_in_background(self.client)

    def abandon(self) -> None:
        """Stop using the session but let it lapse by itself (nothing released early)."""
        if not self._started or self.session is None or self.lost:
            self.stop()
            return

        def reap() -> None:
            self._done.wait(max(self.negotiated, self.seconds) * _ABANDON_CAP + 5.0)
            if not self.lost and self._live.is_set() and self.client._session_id == self.session:
                return  # still alive by the server's word: closing it now would release early
            _stop_in_background(self.client)

        threading.Thread(target=reap, name="zk-lapse", daemon=True).start()

