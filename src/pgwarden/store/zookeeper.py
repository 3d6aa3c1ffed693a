"""The ZooKeeper backend of the store port, on kazoo: leases are ephemeral znodes held by sessions
whose timeout is the lease's ttl, versions are znode versions, changes arrive through watches."""

from __future__ import annotations

import functools
import logging
import posixpath
import threading
import time
from collections.abc import Mapping

from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError
from kazoo.protocol.states import ZnodeStat

from pgwarden.store.base import (
    ANY,
    KV,
    AnyVersion,
    Entry,
    Layout,
    StoreError,
    StoreUnavailable,
    Version,
    check_also,
    check_ttl_put,
)
from pgwarden.store.zookeeper_session import _await, _Lease, _stop_in_background, client_auth
from pgwarden.store.zookeeper_take_over import Write, commit_take_over, parse_token, token, version_of
from pgwarden.store.zookeeper_watch import ZooKeeperWatch

log = logging.getLogger(__name__)


class ZooKeeperKV(ZooKeeperWatch, KV):
    """One cluster's keys in ZooKeeper (3.5 or later).

    Layout: `<prefix>/<cluster>/<key>` znodes (a directory's keys are its children). Keys held
    by a lease (acquired, or put with a ttl: the leader key, the init lock, this instance's
    member key) are ephemeral znodes, each held by a session of its own whose timeout is the
    lease's ttl (see `_Lease`); everything else is persistent and read, written and watched
    through one ordinary session.

    Versions are the znode's data version as a string; an ephemeral (leased) node's also names
    the zxid that created it (`<version>:<czxid>`, see `zookeeper_take_over.token`), which
    `take_over` checks and plain puts and deletes ignore. The cluster znode's own data version is
    the lease epoch: every create of a leased key sets it in the same transaction, so that an
    adopting renewal or a take-over can tell a key's incarnations apart (see `_adopt`).

    Session timeouts: the server clamps them to [minSessionTimeout, maxSessionTimeout]. A longer
    one than asked only slows failover; a shorter one for a strict lease (the leader's) would let
    the key vanish before the runner's deadline, so `acquire` and `renew` refuse it (StoreError).

    `close()` ends the reading session and abandons the lease sessions without closing them:
    like the etcd backend, a stopped agent never gives up leadership implicitly; its keys lapse
    `ttl` after its last call. (Closing a ZooKeeper session would delete them at once, which is
    what Patroni does; the runner releases explicitly after stopping PostgreSQL instead.)

    `wait_for_change` wakes for changes of the watched keys (see `ZooKeeperWatch`) made after the
    caller's last read, except this instance's own writes through the reading session; and when
    the reading session is suspended or lost. ZooKeeper has no multi-key read: `read` pipelines
    its reads on one session, so they are served in order; a change that lands mid-read is
    half-seen, and its watch then wakes the next wait for a fresh read.
    """

    def __init__(self, hosts: list[str], cluster: str, layout: Layout, prefix: str = "/pgwarden",
                 credentials: tuple[str, str] | None = None) -> None:
        if not hosts:
            raise ValueError("zookeeper: at least one host is needed")
        self.cluster = cluster
        self.hosts = ",".join(hosts)
        self._layout = layout
        self._base = f"/{prefix.strip('/')}/{cluster}" if prefix.strip("/") else f"/{cluster}"
        self._lock = threading.Lock()  # guards the lease table (and starting the reading session)
        self._closed = False
        self._auth = client_auth(credentials)
        self._init_watch()
        self._leases: dict[str, _Lease] = {}  # key -> the session holding it
        self._created: set[str] = set()  # keys put with a ttl that their current session created
        self._warned: set[str] = set()

    # -- reading -------------------------------------------------------------------------------
    def read(self, timeout: float) -> dict[str, Entry]:
        deadline = time.monotonic() + timeout
        zk = self._client(deadline)
        # A sync first: a follower then answers with at least what the ZooKeeper leader had.
        sync = zk.sync_async(self._base)
        gets = {
            rel: self._issue(rel, functools.partial(zk.get_async, self._path(rel)), lambda v: int(v[1].mzxid))
            for rel in self._layout.keys
        }
        listings = {
            rel: self._issue(
                rel,
                functools.partial(zk.get_children_async, self._path(rel), include_data=True),
                lambda v: int(v[1].pzxid),
            )
            for rel in self._layout.dirs
        }
        _await(sync, deadline)
        out: dict[str, Entry] = {}
        seen: dict[str, int] = {}
        for rel, r in gets.items():
            try:
                data, stat = _await(r, deadline)
            except NoNodeError:
                seen[rel] = 0
                continue
            out[rel] = Entry(data.decode("utf-8", errors="replace"), token(stat))
            seen[rel] = int(stat.mzxid)
        children: list[tuple[str, object]] = []
        for rel, r in listings.items():
            try:
                names, dir_stat = _await(r, deadline)
                seen[rel] = int(dir_stat.pzxid)
            except NoNodeError:
                names, seen[rel] = [], 0
            children += [(f"{rel}/{n}", zk.get_async(self._path(f"{rel}/{n}"))) for n in names]
        for key, r in children:
            try:
                data, stat = _await(r, deadline)
            except NoNodeError:
                continue  # left between the listing and the read
            out[key] = Entry(data.decode("utf-8", errors="replace"), token(stat))
        with self._cond:
            for rel in self._watched:
                self._known[rel] = seen[rel]
        return out

    # -- persistent keys -----------------------------------------------------------------------
    def put(self, key: str, value: str, version: Version, timeout: float, ttl: float | None = None) -> bool:
        check_ttl_put(version, ttl)
        deadline = time.monotonic() + timeout
        if ttl is not None:
            self._put_ephemeral(key, value, ttl, deadline)
            return True
        if version is ANY:
            self._put(key, value, deadline)
            return True
        if version is None:
            return self._create(key, value, deadline)
        v = version_of(version)
        return v is not None and self._set(key, value, v, deadline)

    def delete(self, key: str, version: str | AnyVersion, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        if version is ANY:
            deleted = self._delete(key, deadline)
        else:
            v = version_of(version)
            deleted = v is not None and self._delete(key, deadline, v)
        if deleted or version is ANY:
            with self._lock:
                lease = self._leases.pop(key, None)
            if lease is not None:
                lease.stop()
        return deleted

    # -- ephemeral keys ------------------------------------------------------------------------
    def _new_lease(self, seconds: float) -> _Lease:
        if self._closed:
            raise StoreError("zookeeper: the store is closed")
        return _Lease(self.hosts, seconds, self._auth)

    def _put_ephemeral(self, key: str, value: str, ttl: float, deadline: float) -> None:
        """Write `key` as an ephemeral node of its own session of `ttl`; each write renews it."""
        data = value.encode()
        with self._lock:
            lease = self._leases.get(key)
            if lease is None or lease.lost or lease.seconds != ttl:
                if lease is not None:
                    lease.stop()  # its key goes now; the new session's follows below
                lease = self._leases[key] = self._new_lease(ttl)
                self._created.discard(key)
        zk = lease.connect(deadline)
        path = self._path(key)
        for _ in range(3):
            if key in self._created:
                try:
                    _await(zk.set_async(path, data), deadline)  # also renews the session
                    return
                except NoNodeError:
                    self._created.discard(key)  # deleted by someone: create it again
            try:
                _await(zk.create_async(path, data, ephemeral=True, makepath=True), deadline)
                self._created.add(key)
                return
            except NodeExistsError:
                pass
            # Left by another session (a previous run of this agent, still lapsing): replace it.
            try:
                _, stat = _await(zk.get_async(path), deadline)
                if lease.owns(stat):
                    self._created.add(key)
                else:
                    _await(zk.delete_async(path, stat.version), deadline)
            except (NoNodeError, BadVersionError):
                pass
        raise StoreUnavailable(f"zookeeper: {path} kept changing under the write")

    def _create_leased(self, lease: _Lease, rel: str, value: str, deadline: float) -> bool:
        """Create `rel` held by `lease`'s session, bumping the cluster node's data version in the
        same transaction (the lease epoch `_adopt` checks); False if `rel` exists."""
        zk = lease.connect(deadline)
        path = self._path(rel)
        for _ in range(2):
            txn = zk.transaction()
            txn.create(path, value.encode(), ephemeral=True)
            txn.set_data(self._base, b"", -1)
            results = _await(txn.commit_async(), deadline)
            if not isinstance(results[0], Exception):
                self._saw(rel, int(results[1].mzxid))  # one transaction: one zxid for both
                return True
            if isinstance(results[0], NodeExistsError):
                return False
            if not isinstance(results[0], NoNodeError):
                raise StoreError(f"zookeeper: creating {path}: {results[0]!r}")
            _await(zk.ensure_path_async(posixpath.dirname(path)), deadline)  # a new cluster
        raise StoreUnavailable(f"zookeeper: {posixpath.dirname(path)} kept vanishing under the create")

    def _confirm(self, lease: _Lease, rel: str, value: str, deadline: float) -> ZnodeStat | None:
        """Read `rel` through `lease`'s own session: the answer proves the server heard from that
        session during this call. The stat if the node is `value` and held by the session."""
        if not lease.live():
            # The session is between connections, maybe expired: if the reading session shows
            # the node gone or someone else's, that is the answer, whatever the lease's fate.
            got = self._get(rel, deadline)
            if got is None or got[0] != value or not lease.owns(got[1]):
                return None
        zk = lease.connect(deadline)
        zk.sync_async(self._path(rel))  # answers arrive in order: the get below waits for it
        try:
            data, stat = _await(zk.get_async(self._path(rel)), deadline)
        except NoNodeError:
            return None
        if data.decode("utf-8", errors="replace") != value or not lease.owns(stat):
            return None
        return stat

    def _warn_once(self, key: str, message: str, *args: object) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, *args)

    def _check_length(self, key: str, lease: _Lease, ttl: float, strict: bool) -> None:
        if lease.negotiated < ttl:
            if strict:
                raise StoreError(
                    f"zookeeper: the server grants sessions of {lease.negotiated:g} s, shorter than "
                    f"ttl {ttl:g} s, so the {key} key could vanish before its holder's deadline; "
                    "raise the server's maxSessionTimeout or lower ttl"
                )
            self._warn_once(f"{key}-short", "zookeeper: the %s key lapses %.1f s after its last renewal, "
                            "not %.1f s (the server's maxSessionTimeout)", key, lease.negotiated, ttl)
        elif lease.negotiated > ttl and strict:
            self._warn_once(f"{key}-long", "zookeeper: the server grants sessions of %g s, longer "
                            "than ttl %g s: a dead holder's %s key lingers that long (minSessionTimeout)",
                            lease.negotiated, ttl, key)

    def acquire(self, key: str, value: str, ttl: float, timeout: float, strict: bool = True) -> bool:
        deadline = time.monotonic() + timeout
        with self._lock:
            lease = self._leases.get(key)
            if lease is not None and lease.lost:
                lease = None
        if lease is not None and lease.seconds != ttl:
            # A session of another length can hold the key only if we hold it already.
            got = self._get(key, deadline)
            if got is not None and lease.owns(got[1]):
                return False
            lease.stop()
            lease = None
        if lease is None:
            lease = self._new_lease(ttl)
            with self._lock:
                self._leases[key] = lease
        lease.connect(deadline)
        self._check_length(key, lease, ttl, strict)
        # If this times out the node may exist anyway: the lease stays, so renew can still
        # confirm it (or say False if it never landed).
        return self._create_leased(lease, key, value, deadline)

    def renew(
        self, key: str, value: str, ttl: float, timeout: float, strict: bool = True, adopt: bool = False
    ) -> bool:
        """Confirm through the key's session that it is still `value` and this session's: the
        server heard from the session after the call was sent, so the key lives at least until
        send time + the session timeout (>= ttl, checked when the session started).

        In an ensemble, a follower passes that contact on to the ZooKeeper leader at its next
        tick: keep the runner's margin above tickTime. `adopt`: see `_adopt`."""
        deadline = time.monotonic() + timeout
        with self._lock:
            lease = self._leases.get(key)
        if lease is None or lease.lost:
            return adopt and self._adopt(key, value, None, ttl, strict, deadline)
        stat = self._confirm(lease, key, value, deadline)
        if stat is None:
            if adopt:
                return self._adopt(key, value, lease, ttl, strict, deadline)
            self._drop(key, lease)
            return False
        if lease.seconds != ttl:
            return self._move(key, value, lease, stat, ttl, strict, deadline)
        return True

    def _move(
        self, key: str, value: str, old: _Lease, stat: ZnodeStat, ttl: float, strict: bool, deadline: float
    ) -> bool:
        """Move the key to a session of the new ttl, in one transaction that cannot take a key
        someone else created meanwhile."""
        new = self._new_lease(ttl)
        try:
            new.connect(deadline)
            self._check_length(key, new, ttl, strict)
            # Bump the version through the old session (refused if that session has ended), so
            # the version checked below is >= 1: a key created by anyone else has version 0.
            zk = old.connect(deadline)
            path = self._path(key)
            try:
                bumped = _await(zk.set_async(path, value.encode(), stat.version), deadline)
            except (BadVersionError, NoNodeError):
                new.stop()
                self._drop(key, old)
                return False
            txn = new.client.transaction()
            txn.check(path, bumped.version)
            txn.delete(path, bumped.version)
            txn.create(path, value.encode(), ephemeral=True)
            txn.set_data(self._base, b"", -1)  # a new incarnation: a new epoch (see `_adopt`)
            results = _await(txn.commit_async(), deadline)
        except BaseException:
            new.stop()
            raise
        if any(isinstance(r, Exception) for r in results):
            new.stop()
            self._drop(key, old)
            return False
        with self._lock:
            self._leases[key] = new
        old.stop()  # it holds nothing now
        return True

    def _adopt(
        self, key: str, value: str, held: _Lease | None, ttl: float, strict: bool, deadline: float
    ) -> bool:
        """Take over the key, if it is `value` on a session we do not hold (a previous run's),
        with a session of our own: one transaction deletes the node at the version we read and
        creates ours, so the key is never absent.

        The node's version alone cannot tell its incarnations apart (every one is created at
        version 0): between our read and the transaction, the old node could expire and another
        member's create land at that same version. So every create of a leased key (acquire,
        ttl move, adoption) bumps the cluster node's data version in its own transaction: the
        lease epoch. We read the epoch first, then the key, on one session (answered in order),
        and the transaction sets the epoch at the version we read: any create since fails it.
        The new session answered during this call, so the key lasts until send time + ttl."""
        new = self._new_lease(ttl)
        path = self._path(key)
        try:
            zk = new.connect(deadline)
            self._check_length(key, new, ttl, strict)
            zk.sync_async(path)  # answers arrive in order: the reads below wait for it
            epoch_r, node_r = zk.get_async(self._base), zk.get_async(path)
            try:
                _, epoch = _await(epoch_r, deadline)
                data, stat = _await(node_r, deadline)
            except NoNodeError:
                data, stat = None, None
            results: list[object] = []
            if data is not None and data.decode("utf-8", errors="replace") == value:
                txn = zk.transaction()
                txn.delete(path, stat.version)
                txn.create(path, value.encode(), ephemeral=True)
                txn.set_data(self._base, b"", epoch.version)
                results = _await(txn.commit_async(), deadline)
        except BaseException:
            new.stop()
            raise
        if not results or any(isinstance(r, Exception) for r in results):
            new.stop()
            if held is not None:
                self._drop(key, held)
            return False
        self._saw(key, int(results[-1].mzxid))  # type: ignore[attr-defined]
        with self._lock:
            self._leases[key] = new
        if held is not None:
            held.stop()  # it holds nothing now
        log.info("zookeeper: adopted the %s key left by session %#x", key, stat.ephemeralOwner)
        return True

    def take_over(
        self, key: str, value: str, version: str, ttl: float, timeout: float,
        also: Mapping[str, tuple[str, Version]] | None = None,
    ) -> bool:
        """As `_adopt`, conditioned on the token instead of the value: with a session of our own,
        read the lease epoch and the key (in order, after a sync); if the key is still the
        incarnation the token names (its czxid) at its version, one transaction deletes it at
        that version, creates ours, bumps the epoch at the version we read (so a key recreated
        meanwhile fails it) and writes the also-keys (set_data at their version, which always
        bumps it; create where absent). The new session answered during this call, so the key
        lasts until send time + ttl; the previous holder's session now owns nothing."""
        others = check_also(key, also)
        parsed = parse_token(version)
        writes: list[Write] = []
        for rel, (new_value, other_token) in others.items():
            other = None if other_token is None else version_of(other_token)
            if other_token is not None and other is None:
                return False  # a token this backend never handed out cannot match
            writes.append((self._path(rel), new_value.encode(), other))
        if parsed is None:
            return False
        deadline = time.monotonic() + timeout
        with self._lock:
            held = self._leases.get(key)
        new = self._new_lease(ttl)
        outcome: tuple[int, int] | None = None
        keep = False
        try:
            zk = new.connect(deadline)
            self._check_length(key, new, ttl, True)
            outcome = commit_take_over(zk, self._base, self._path(key), value, parsed, writes, deadline)
        except StoreUnavailable:
            # The transaction may have landed unheard: as in acquire, keep the session so a
            # renew can confirm the key (or say False); a session that holds nothing lapses.
            with self._lock:
                if held is None or held.lost:
                    self._leases[key] = new
                    keep = True
            raise
        finally:
            if outcome is None and not keep:
                new.stop()  # it holds nothing
        if outcome is None:
            return False
        zxid, previous = outcome
        for rel in (key, *others):
            self._saw(rel, zxid)
        with self._lock:
            self._leases[key] = new
            self._created.discard(key)
        if held is not None:
            held.stop()  # it holds nothing now
        log.info("zookeeper: took over the %s key from session %#x", key, previous)
        return True

    def _drop(self, key: str, lease: _Lease) -> None:
        with self._lock:
            if self._leases.get(key) is lease:
                del self._leases[key]
        lease.stop()

    def release(self, key: str, value: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        got = self._get(key, deadline)
        ok = got is not None and got[0] == value and self._delete(key, deadline, got[1].version)
        with self._lock:
            lease = self._leases.get(key)
            if lease is not None and (got is None or got[0] == value or not lease.owns(got[1])):
                del self._leases[key]
            else:
                lease = None
        if lease is not None:
            lease.stop()  # holds nothing (else): ending it deletes nothing of value
        return ok

    # -- shutting down -------------------------------------------------------------------------
    def close(self) -> None:
        """End the reading session; leave the lease sessions to lapse (see the class doc)."""
        with self._lock:
            self._closed = True
            leases = list(self._leases.values())
            self._leases.clear()
            started = self._main_started
        for lease in leases:
            lease.abandon()
        if started:
            _stop_in_background(self._main)
        with self._cond:
            self._cond.notify_all()
