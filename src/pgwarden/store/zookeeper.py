"""The ZooKeeper backend of the store port, on kazoo: leases are ephemeral znodes held by sessions
whose timeout is the lease's ttl, tokens are znode versions, changes arrive through watches."""

from __future__ import annotations

import functools
import json
import logging
import threading
import time

from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError
from kazoo.protocol.states import ZnodeStat

from pgwarden.config.errors import ConfigError
from pgwarden.config.load import parse_stored_settings
from pgwarden.config.schema import ClusterSettings
from pgwarden.core.model import (
    ClusterView,
    FailoverRequest,
    HistoryEntry,
    LeaderKey,
    MemberInfo,
    SyncState,
)
from pgwarden.store.base import (
    Store,
    StoreError,
    StoreUnavailable,
    dump_failover,
    dump_history,
    dump_member,
    dump_settings,
    dump_sync,
    load_failover,
    load_history,
    load_member,
    load_sync,
)
from pgwarden.store.zookeeper_session import _await, _Lease, _stop_in_background
from pgwarden.store.zookeeper_watch import _WATCHED, ZooKeeperWatch

log = logging.getLogger(__name__)

_KEYS = ("initialize", "init_lock", "config", "leader", "sync", "failover", "history", "optime")


class ZooKeeperStore(ZooKeeperWatch, Store):
    """One cluster's keys in ZooKeeper (3.5 or later).

    Layout: `<prefix>/<cluster>/<key>` znodes, values as in every backend (JSON). The leader key,
    the init lock and this instance's member key are ephemeral znodes, each held by a session of
    its own whose timeout is the lease's ttl (see `_Lease`); everything else is persistent and
    read, written and watched through one ordinary session.

    Tokens are the znode's data version as a string; `None` or `""` means create-only.

    Session timeouts: the server clamps them to [minSessionTimeout, maxSessionTimeout]. A longer
    one than asked only slows failover; a shorter one for the leader would let the key vanish
    before the runner's deadline, so `acquire_leader` refuses it (StoreError).

    `close()` ends the reading session and abandons the lease sessions without closing them:
    like the etcd backend, a stopped agent never gives up leadership implicitly; its keys lapse
    `ttl` after its last call. (Closing a ZooKeeper session would delete them at once, which is
    what Patroni does; the runner releases explicitly after stopping PostgreSQL instead.)

    `wait_for_change` wakes for changes of the watched keys (`_WATCHED`) made after the caller's
    last snapshot, except this instance's own writes; and when the reading session is suspended
    or lost. ZooKeeper has no multi-key read: `snapshot` pipelines its reads on one session, so
    they are served in order; a change that lands mid-read is half-seen, and its watch then
    wakes the next wait for a fresh read.
    """

    def __init__(self, hosts: list[str], cluster: str, prefix: str = "/pgwarden") -> None:
        if not hosts:
            raise ValueError("zookeeper: at least one host is needed")
        self.cluster = cluster
        self.hosts = ",".join(hosts)
        self._base = f"/{prefix.strip('/')}/{cluster}" if prefix.strip("/") else f"/{cluster}"
        self._lock = threading.Lock()  # guards the lease fields (and starting the reading session)
        self._closed = False
        self._init_watch()
        self._leader: _Lease | None = None
        self._init: _Lease | None = None
        self._member: _Lease | None = None
        self._member_name: str | None = None
        self._member_created = False
        self._warned: set[str] = set()

    # -- reading -------------------------------------------------------------------------------
    def snapshot(self, timeout: float) -> ClusterView:
        deadline = time.monotonic() + timeout
        zk = self._client(deadline)
        # A sync first: a follower then answers with at least what the ZooKeeper leader had.
        sync = zk.sync_async(self._base)
        gets = {
            rel: self._issue(rel, functools.partial(zk.get_async, self._path(rel)), lambda v: int(v[1].mzxid))
            for rel in _KEYS
        }
        members_path = self._path("members")
        children = self._issue(
            "members",
            lambda: zk.get_children_async(members_path, include_data=True),
            lambda v: int(v[1].pzxid),
        )
        _await(sync, deadline)
        values: dict[str, tuple[str, ZnodeStat]] = {}
        seen: dict[str, int] = {}
        for rel, r in gets.items():
            try:
                data, stat = _await(r, deadline)
            except NoNodeError:
                seen[rel] = 0
                continue
            values[rel] = (data.decode("utf-8", errors="replace"), stat)
            seen[rel] = int(stat.mzxid)
        try:
            names, dir_stat = _await(children, deadline)
            seen["members"] = int(dir_stat.pzxid)
        except NoNodeError:
            names, seen["members"] = [], 0
        member_gets = [zk.get_async(f"{members_path}/{n}") for n in names]
        raw_members: list[str] = []
        for r in member_gets:
            try:
                data, _ = _await(r, deadline)
            except NoNodeError:
                continue  # left between the listing and the read
            raw_members.append(data.decode("utf-8", errors="replace"))
        with self._cond:
            for rel in _WATCHED:
                self._known[rel] = seen[rel]
        return self._parse(values, raw_members)

    def _parse(self, values: dict[str, tuple[str, ZnodeStat]], raw_members: list[str]) -> ClusterView:
        settings = ClusterSettings()
        settings_token = ""
        leader: LeaderKey | None = None
        sync: SyncState | None = None
        failover: FailoverRequest | None = None
        history: tuple[HistoryEntry, ...] = ()
        leader_lsn: int | None = None
        members: dict[str, MemberInfo] = {}
        for rel, (raw, stat) in values.items():
            token = str(stat.version)
            try:
                if rel == "config":
                    settings_token = token
                    try:
                        settings = parse_stored_settings(json.loads(raw), f"zookeeper node {self._path(rel)}")
                    except (ConfigError, ValueError) as e:
                        # Keep the token so an operator's fix (a CAS write) still goes through.
                        log.warning("zookeeper: stored cluster settings are invalid, using defaults: %s", e)
                elif rel == "leader":
                    leader = LeaderKey(raw, token)
                elif rel == "sync":
                    sync = load_sync(raw, token)
                elif rel == "failover":
                    failover = load_failover(raw, token)
                elif rel == "history":
                    history = load_history(raw)
                elif rel == "optime":
                    leader_lsn = int(raw)
            except (ValueError, KeyError, TypeError) as e:
                log.warning("zookeeper: skipping unreadable node %s: %s", self._path(rel), e)
        for raw in raw_members:
            try:
                m = load_member(raw)
            except (ValueError, KeyError, TypeError) as e:
                log.warning("zookeeper: skipping an unreadable member: %s", e)
                continue
            members[m.name] = m
        init = values.get("initialize")
        init_lock = values.get("init_lock")
        return ClusterView(
            initialized=init[0] if init else None,
            init_holder=init_lock[0] if init_lock else None,
            settings=settings,
            settings_token=settings_token,
            leader=leader,
            members=members,
            sync=sync,
            failover=failover,
            history=history,
            leader_lsn=leader_lsn,
        )

    # -- persistent keys -----------------------------------------------------------------------
    def _cas(self, rel: str, value: str, token: str | None, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        if not token:
            return self._create(rel, value, deadline)
        try:
            version = int(token)
        except ValueError:
            return False  # not a token this backend handed out: it cannot match
        return self._set(rel, value, version, deadline)

    def set_settings(self, settings: ClusterSettings, token: str | None, timeout: float) -> bool:
        return self._cas("config", dump_settings(settings), token, timeout)

    def set_sync(self, state: SyncState, token: str | None, timeout: float) -> bool:
        return self._cas("sync", dump_sync(state), token, timeout)

    def set_failover(self, request: FailoverRequest, token: str | None, timeout: float) -> bool:
        return self._cas("failover", dump_failover(request), token, timeout)

    def clear_failover(self, timeout: float) -> None:
        self._delete("failover", time.monotonic() + timeout)

    def set_history(self, history: tuple[HistoryEntry, ...], timeout: float) -> None:
        self._put("history", dump_history(history), time.monotonic() + timeout)

    def set_optime(self, lsn: int, timeout: float) -> None:
        self._put("optime", str(int(lsn)), time.monotonic() + timeout)

    def set_initialized(self, system_id: str, timeout: float) -> bool:
        return self._create("initialize", system_id, time.monotonic() + timeout)

    # -- ephemeral keys ------------------------------------------------------------------------
    def _new_lease(self, seconds: float) -> _Lease:
        if self._closed:
            raise StoreError("zookeeper: the store is closed")
        return _Lease(self.hosts, seconds)

    def _create_ephemeral(self, lease: _Lease, rel: str, value: str, deadline: float) -> ZnodeStat | None:
        """Create `rel` held by `lease`'s session; None if it exists."""
        zk = lease.connect(deadline)
        r = zk.create_async(self._path(rel), value.encode(), ephemeral=True, makepath=True, include_data=True)
        try:
            _, stat = _await(r, deadline)
        except NodeExistsError:
            return None
        self._saw(rel, int(stat.mzxid))
        return stat

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

    def take_init_lock(self, name: str, ttl: float, timeout: float) -> bool:
        """Create-only, held by a session of `ttl`. Calling it again while holding the lock is a
        renewal, so a long bootstrap can keep the lock."""
        deadline = time.monotonic() + timeout
        with self._lock:
            lease = self._init
            if lease is None or lease.lost:
                lease = self._init = self._new_lease(ttl)
        if self._confirm(lease, "init_lock", name, deadline) is not None:
            return True
        if lease.negotiated < ttl:
            self._warn_once("init", "zookeeper: the init lock lapses %.1f s after its last renewal, "
                            "not %.1f s (the server's maxSessionTimeout)", lease.negotiated, ttl)
        return self._create_ephemeral(lease, "init_lock", name, deadline) is not None

    def release_init_lock(self, name: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        got = self._get("init_lock", deadline)
        if got is not None and got[0] == name:
            self._delete("init_lock", deadline, got[1].version)
        with self._lock:
            lease = self._init
            if lease is not None and (got is None or got[0] == name or not lease.owns(got[1])):
                self._init = None
                lease.stop()  # holds nothing (else): ending it deletes nothing of value

    # -- the leader lease ----------------------------------------------------------------------
    def _check_length(self, lease: _Lease, ttl: float) -> None:
        if lease.negotiated < ttl:
            raise StoreError(
                f"zookeeper: the server grants sessions of {lease.negotiated:g} s, shorter than "
                f"ttl {ttl:g} s, so the leader key could vanish before the leader's deadline; "
                "raise the server's maxSessionTimeout or lower ttl"
            )
        if lease.negotiated > ttl:
            self._warn_once("leader-long", "zookeeper: the server grants sessions of %g s, longer "
                            "than ttl %g s: a dead leader's key lingers that long (minSessionTimeout)",
                            lease.negotiated, ttl)

    def acquire_leader(self, name: str, ttl: float, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._lock:
            lease = self._leader
            if lease is not None and lease.lost:
                lease = None
        if lease is not None and lease.seconds != ttl:
            # A session of another length can hold the key only if we hold it already.
            got = self._get("leader", deadline)
            if got is not None and lease.owns(got[1]):
                return False
            lease.stop()
            lease = None
        if lease is None:
            lease = self._new_lease(ttl)
            with self._lock:
                self._leader = lease
        lease.connect(deadline)
        self._check_length(lease, ttl)
        # If this times out the node may exist anyway: the lease stays, so renew_leader can
        # still confirm it (or say False if it never landed).
        return self._create_ephemeral(lease, "leader", name, deadline) is not None

    def renew_leader(self, name: str, ttl: float, timeout: float) -> bool:
        """Confirm through the leader session that the key is still `name`'s and this session's:
        the server heard from the session after the call was sent, so the key lives at least
        until send time + the session timeout (>= ttl, checked when the session started).

        In an ensemble, a follower passes that contact on to the ZooKeeper leader at its next
        tick: keep the runner's margin above tickTime."""
        deadline = time.monotonic() + timeout
        lease = self._leader
        if lease is None or lease.lost:
            return False
        stat = self._confirm(lease, "leader", name, deadline)
        if stat is None:
            self._drop_leader(lease)
            return False
        if lease.seconds != ttl:
            return self._move_leader(name, lease, stat, ttl, deadline)
        return True

    def _move_leader(self, name: str, old: _Lease, stat: ZnodeStat, ttl: float, deadline: float) -> bool:
        """Move the key to a session of the new ttl, in one transaction that cannot take a key
        someone else created meanwhile."""
        new = self._new_lease(ttl)
        try:
            new.connect(deadline)
            self._check_length(new, ttl)
            # Bump the version through the old session (refused if that session has ended), so
            # the version checked below is >= 1: a key created by anyone else has version 0.
            zk = old.connect(deadline)
            path = self._path("leader")
            try:
                bumped = _await(zk.set_async(path, name.encode(), stat.version), deadline)
            except (BadVersionError, NoNodeError):
                new.stop()
                self._drop_leader(old)
                return False
            txn = new.client.transaction()
            txn.check(path, bumped.version)
            txn.delete(path, bumped.version)
            txn.create(path, name.encode(), ephemeral=True)
            results = _await(txn.commit_async(), deadline)
        except BaseException:
            new.stop()
            raise
        if any(isinstance(r, Exception) for r in results):
            new.stop()
            self._drop_leader(old)
            return False
        with self._lock:
            self._leader = new
        old.stop()  # it holds nothing now
        return True

    def _drop_leader(self, lease: _Lease) -> None:
        with self._lock:
            if self._leader is lease:
                self._leader = None
        lease.stop()

    def release_leader(self, name: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        got = self._get("leader", deadline)
        if got is None or got[0] != name:
            return False
        if not self._delete("leader", deadline, got[1].version):
            return False
        lease = self._leader
        if lease is not None and lease.owns(got[1]):
            self._drop_leader(lease)
        return True

    # -- members -------------------------------------------------------------------------------
    def publish_member(self, info: MemberInfo, ttl: float, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        value = dump_member(info).encode()
        with self._lock:
            lease = self._member
            if lease is None or lease.lost or lease.seconds != ttl or self._member_name != info.name:
                if lease is not None:
                    lease.stop()  # its key goes now; the new session's follows below
                lease = self._member = self._new_lease(ttl)
                self._member_name = info.name
                self._member_created = False
        zk = lease.connect(deadline)
        path = self._path(f"members/{info.name}")
        for _ in range(3):
            if self._member_created:
                try:
                    _await(zk.set_async(path, value), deadline)  # also renews the session
                    return
                except NoNodeError:
                    self._member_created = False  # deleted by someone: create it again
            try:
                _await(zk.create_async(path, value, ephemeral=True, makepath=True), deadline)
                self._member_created = True
                return
            except NodeExistsError:
                pass
            # Left by another session (a previous run of this agent, still lapsing): replace it.
            try:
                _, stat = _await(zk.get_async(path), deadline)
                if lease.owns(stat):
                    self._member_created = True
                else:
                    _await(zk.delete_async(path, stat.version), deadline)
            except (NoNodeError, BadVersionError):
                pass
        raise StoreUnavailable(f"zookeeper: {path} kept changing under the write")

    def delete_member(self, name: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        zk = self._client(deadline)
        try:
            _await(zk.delete_async(self._path(f"members/{name}")), deadline)
        except NoNodeError:
            pass
        with self._lock:
            lease = self._member
            if lease is not None and name == self._member_name:
                self._member = None
                self._member_name = None
                lease.stop()

    # -- shutting down -------------------------------------------------------------------------
    def close(self) -> None:
        """End the reading session; leave the lease sessions to lapse (see the class doc)."""
        with self._lock:
            self._closed = True
            leases = [x for x in (self._leader, self._init, self._member) if x is not None]
            self._leader = self._init = self._member = None
            started = self._main_started
        for lease in leases:
            lease.abandon()
        if started:
            _stop_in_background(self._main)
        with self._cond:
            self._cond.notify_all()
