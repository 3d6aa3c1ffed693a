"""The store port with no external store: the agents (and witnesses) form a Raft group among
themselves and keep the cluster's keys in a replicated map (`raft_kv.ReplicatedKV`).

Why pysyncobj: it is maintained, pure Python (no compiler or server to install next to each
agent), and it is what Patroni's raft mode uses for exactly this purpose, so its behaviour under
failover is known in the field. It replicates method calls on a Python object through a Raft log,
with a journal for term, vote and log on disk; it has no notion of TTLs, which we add on top
(see `raft_kv` for the expiry rules and why they keep SAFETY rule 2).

Where it falls short, and what this module does about it:
* No read index or lease reads: a member's local state may be behind. `read` therefore
  commits a no-op through the log first (a read barrier) and reads after it is applied, so a
  read is linearizable and a member cut off from the majority cannot present a stale view.
* Its transport unpickles what peers send. With `store.raft.password_file` every message is
  encrypted and authenticated with the shared secret (pysyncobj's `password`: Fernet, from the
  `cryptography` package), so only holders of the secret are heard; without one, the raft port
  must only be reachable by the group (a private network). `pgwarden local up` sets one.
* It has no pre-vote: a member rejoining after a partition forces one election.
* Its tick thread stops when the thread that created the node ends, so nodes are created from
  the process's main thread (the agent and the witness do).
* Commands carry no deadline: one sent just before a partition can in principle be applied
  late. Every write is a compare-and-swap whose outcome the caller re-reads, as with etcd.

One raft node runs per process (the agent opens two stores, one for the HA loop and one for the
REST API): `acquire_node` keeps a registry keyed by the node's own address, and each `RaftKV` is
a thin client of it.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf  # type: ignore[import-untyped]

from pgwarden.config.errors import ConfigError
from pgwarden.config.schema import RaftConfig
from pgwarden.store.base import (
    ANY,
    KV,
    AnyVersion,
    Entry,
    Layout,
    StoreUnavailable,
    Version,
    check_also,
    check_ttl_put,
)
from pgwarden.store.raft_kv import Change, ReplicatedKV, Result, command

log = logging.getLogger(__name__)

# Raft timing. The leader heartbeats every 0.1 s; a follower that hears nothing for 0.5-1.0 s
# starts an election; a leader that hears from no majority for 1 s steps down. All of it well
# inside the shortest lease (MIN_TTL = 2 s), so a lost leader is replaced before leases matter.
_TIMING: dict[str, Any] = {
    "autoTickPeriod": 0.05,
    "appendEntriesPeriod": 0.1,
    "raftMinTimeout": 0.5,
    "raftMaxTimeout": 1.0,
    "leaderFallbackTimeout": 1.0,
    "connectionTimeout": 3.5,
    # pysyncobj's default (5 s) would keep a restarted peer out of the group that long.
    "connectionRetryTime": 0.5,
    "bindRetryTime": 0.2,
    "maxBindRetries": 10,
}
# Pause before retrying a command pysyncobj refused at once (no leader yet, election running).
_RETRY_PAUSE = 0.05

_FAIL_NAMES = {v: k.lower() for k, v in vars(FAIL_REASON).items() if isinstance(v, int)}


class RaftNode:
    """One member of the raft group: pysyncobj's node plus the replicated map. Shared by every
    RaftKV of the process (see `acquire_node`).

    A `voter=False` node is a client (pysyncobj's read-only node): it dials every member, gets
    the log and forwards commands to the leader, but has no address, no vote and no journal, and
    never counts toward a majority. That is how `pgwarden ctl` reaches the group from a host
    whose agent already runs the member."""

    def __init__(self, cfg: RaftConfig, voter: bool = True) -> None:
        self.cfg = cfg
        self.voter = voter
        self.key = _registry_key(cfg, voter)
        self.kv = ReplicatedKV()
        self._stopped = threading.Event()
        self._refs = 0
        extra: dict[str, Any] = {}
        # A client keeps nothing on disk: it gets the state from the group each time it starts.
        if voter and cfg.data_dir is not None:
            cfg.data_dir.mkdir(parents=True, exist_ok=True)
            extra["journalFile"] = str(Path(cfg.data_dir) / "raft.journal")
            extra["fullDumpFile"] = str(Path(cfg.data_dir) / "raft.dump")
        elif voter:
            # Raft's vote must survive a restart, or a member restarted mid-election may vote
            # twice in one term. Fine for tests and throwaway clusters, not for production.
            log.warning("raft: no data_dir for %s; term, vote and log are kept in memory only", cfg.self_addr)
        if cfg.password_file is not None:
            extra["password"] = _read_secret(cfg.password_file)
        conf = SyncObjConf(
            **_TIMING,
            **extra,
            # Fail a command at once when there is no leader (we retry until our deadline)
            # instead of queueing it to be applied whenever a leader appears, maybe much later.
            commandsWaitLeader=False,
            # Send each command at once instead of batching it to the next heartbeat: every
            # HA-loop call waits for its commit.
            appendEntriesUseBatch=False,
            # Forking a process full of threads to write the dump is asking for trouble.
            useFork=False,
        )
        if voter:
            self._so = SyncObj(cfg.self_addr, list(cfg.partner_addrs), conf=conf, consumers=[self.kv])
            try:
                self._so.waitBinded()
            except Exception:
                self._so.destroy_synchronous()
                raise ConfigError(f"store.raft.self_addr: cannot listen on {cfg.self_addr}") from None
        else:
            # A client listens on nothing (and pysyncobj's bind wait would never return for it).
            members = [cfg.self_addr, *cfg.partner_addrs]
            self._so = SyncObj(None, members, conf=conf, consumers=[self.kv])
        self._so.addOnTickCallback(self._on_tick)

    # -- running on pysyncobj's tick thread ----------------------------------------------------
    def _on_tick(self) -> None:
        # Only the leader decides expiry, on its own clock; the expire goes through the log.
        if not self._so._isLeader():
            return
        for cluster, key, touched in self.kv.due(time.monotonic()):
            self.kv.execute(command("expire", cluster, key, rid=uuid.uuid4().hex, arg=touched))

    # -- used by RaftKV ------------------------------------------------------------------------
    def submit(self, cmd: dict[str, Any], deadline: float) -> Result:
        """Apply `cmd` through the log and return its result once committed and applied here.
        Retries (with the same request id, so it takes effect at most once) until `deadline`;
        raises StoreUnavailable if it was not committed by then (e.g. no majority)."""
        last = "no time left"
        while True:
            left = deadline - time.monotonic()
            if self._stopped.is_set():
                raise StoreUnavailable(f"raft node {self.cfg.self_addr} is stopped")
            if left <= 0:
                raise StoreUnavailable(f"raft: not committed in time ({last})")
            done = threading.Event()
            box: list[tuple[Any, int]] = []

            def on_result(res: Any, err: int, box: list[tuple[Any, int]] = box,
                          done: threading.Event = done) -> None:
                box.append((res, err))
                done.set()

            self.kv.execute(cmd, callback=on_result)
            if not done.wait(left):
                raise StoreUnavailable("raft: not committed in time (no majority reachable?)")
            res, err = box[0]
            if err == FAIL_REASON.SUCCESS and res is not None:
                return (bool(res[0]), int(res[1]))
            # Every failure is retried with the same rid: if the first try was applied after
            # all (leader changed, outcome unknown), the map answers with its first result.
            last = _FAIL_NAMES.get(err, str(err))
            self._stopped.wait(min(_RETRY_PAUSE, max(0.0, deadline - time.monotonic())))

    def barrier(self, deadline: float) -> None:
        """Return once everything committed before this call is applied on this member."""
        self.submit(command("noop", "", "", rid=uuid.uuid4().hex), deadline)

    def status(self) -> dict[str, Any]:
        """What this member knows of the group (for the witness' /health and for operators)."""
        so = self._so
        leader = so._getLeader()
        # getStatus walks pysyncobj's dicts while its tick thread may change them: retry once.
        try:
            st = so.getStatus()
        except RuntimeError:
            st = so.getStatus()
        role = {0: "follower", 1: "candidate", 2: "leader"}.get(int(st.get("state", 0)), "unknown")
        return {
            "self": self.cfg.self_addr if self.voter else None,
            "role": role,
            "leader": getattr(leader, "address", None) if leader is not None else None,
            "has_quorum": bool(so.hasQuorum),
            "term": int(so.raftCurrentTerm),
            "commit_index": int(so.raftCommitIndex),
            "last_applied": int(so.raftLastApplied),
            "partners": sorted(self.cfg.partner_addrs),
        }

    def is_leader(self) -> bool:
        return bool(self._so._isLeader())

    def stop(self) -> None:
        """Stop this member at once (its clients then get StoreUnavailable)."""
        with _registry_lock:
            if _registry.get(self.key) is self:
                del _registry[self.key]
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._so.removeOnTickCallback(self._on_tick)
        self._so.destroy_synchronous()

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()


_registry_lock = threading.Lock()
_registry: dict[str, RaftNode] = {}


def _registry_key(cfg: RaftConfig, voter: bool) -> str:
    return cfg.self_addr if voter else "client:" + ",".join(sorted([cfg.self_addr, *cfg.partner_addrs]))


def acquire_node(cfg: RaftConfig, voter: bool = True) -> RaftNode:
    """This process's raft node for `cfg.self_addr` (or its client of that group, if not
    `voter`), started on first use. Pair with `release_node`; the node stops when its last user
    releases it."""
    key = _registry_key(cfg, voter)
    with _registry_lock:
        node = _registry.get(key)
        if node is not None and voter:
            if sorted(node.cfg.partner_addrs) != sorted(cfg.partner_addrs):
                raise ConfigError(
                    f"store.raft: {cfg.self_addr} already runs in this process with partners "
                    f"{sorted(node.cfg.partner_addrs)}, not {sorted(cfg.partner_addrs)}"
                )
        elif node is None:
            node = RaftNode(cfg, voter)
            _registry[key] = node
        node._refs += 1
        return node


def release_node(node: RaftNode) -> None:
    with _registry_lock:
        node._refs -= 1
        last = node._refs <= 0
        if last and _registry.get(node.key) is node:
            # Out of the registry before it stops, so nobody acquires a node being stopped.
            del _registry[node.key]
    if last:
        node.stop()


class RaftKV(KV):
    """One cluster's keys in the raft group, through this process's raft node.

    Versions are the key's revision as a string. Leases (keys acquired, or put with a ttl) are
    owned by this instance: another instance cannot renew them even with the same value, as with
    etcd's lease ids, unless it adopts them (`renew(adopt=True)`: a put conditioned on the
    value); a renewal carries the ttl, so a changed ttl applies from that renewal.
    `close()` releases nothing; leases run out by themselves.

    `wait_for_change` counts every change under the cluster except this instance's own writes,
    renewals, and refreshes of an existing key in a layout directory, and pairs with `read` as
    in etcd: changes already visible in this instance's last read do not count.
    """

    take_over_agreed = False  # see KV.take_over_agreed

    def __init__(self, cfg: RaftConfig, cluster: str, layout: Layout, voter: bool = True) -> None:
        self.cluster = cluster
        self._layout = layout
        self._id = uuid.uuid4().hex  # lease owner token and origin of this instance's writes
        self._node = acquire_node(cfg, voter)
        self._cond = threading.Condition()
        self._seen_rev = 0  # changes up to here are known to the caller
        self._latest_change = 0  # revision of the latest change that counts (see the class doc)
        self._closed = False
        self._woken = False  # interrupt() asked the waiter to return
        self._node.kv.add_listener(self._on_change)

    # -- plumbing ------------------------------------------------------------------------------
    def _do(self, op: str, key: str, timeout: float, **kw: Any) -> bool:
        cmd = command(op, self.cluster, key, rid=uuid.uuid4().hex, origin=self._id, **kw)
        ok, _ = self._node.submit(cmd, time.monotonic() + timeout)
        return ok

    def _on_change(self, ch: Change) -> None:
        # Runs on the raft tick thread: cheap, never blocks.
        if ch.cluster != self.cluster or ch.origin == self._id or ch.op == "renew":
            return
        if ch.op == "put" and not ch.created and self._layout.in_dir(ch.key):
            return  # a member refreshing its key every loop is not news
        with self._cond:
            self._latest_change = max(self._latest_change, ch.revision)
            self._cond.notify_all()

    # -- reading -------------------------------------------------------------------------------
    def read(self, timeout: float) -> dict[str, Entry]:
        self._node.barrier(time.monotonic() + timeout)
        records, revision = self._node.kv.read(self.cluster)
        with self._cond:
            self._seen_rev = max(self._seen_rev, revision)
        return {key: Entry(r.value, str(r.version)) for key, r in records.items()}

    def wait_for_change(self, timeout: float) -> bool:
        def pending() -> bool:
            return self._closed or self._latest_change > self._seen_rev

        with self._cond:
            self._cond.wait_for(lambda: self._woken or pending(), timeout=max(0.0, timeout))
            self._woken = False
            if not pending() or self._closed:
                return False
            self._seen_rev = max(self._seen_rev, self._latest_change)
            return True

    interruptible = True

    def interrupt(self) -> None:
        with self._cond:  # reentrant: safe from a signal handler of the waiting thread
            self._woken = True
            self._cond.notify_all()

    # -- writing -------------------------------------------------------------------------------
    def put(self, key: str, value: str, version: Version, timeout: float, ttl: float | None = None) -> bool:
        check_ttl_put(version, ttl)
        if ttl is not None:
            return self._do("put", key, timeout, value=value, owner=self._id, ttl=ttl)
        if version is ANY:
            return self._do("put", key, timeout, value=value)
        if version is None:
            return self._do("put", key, timeout, value=value, cond="absent")
        try:
            v = int(version)
        except ValueError:
            return False  # not a token this backend handed out: it cannot match
        return self._do("put", key, timeout, value=value, cond="version", arg=v)

    def delete(self, key: str, version: str | AnyVersion, timeout: float) -> bool:
        if version is ANY:
            return self._do("delete", key, timeout)
        try:
            v = int(version)
        except ValueError:
            return False
        return self._do("delete", key, timeout, cond="version", arg=v)

    # -- leases --------------------------------------------------------------------------------
    def acquire(self, key: str, value: str, ttl: float, timeout: float, strict: bool = True) -> bool:
        """Create-only, owned by this instance (the group keeps any ttl: `strict` holds)."""
        return self._do("put", key, timeout, value=value, owner=self._id, ttl=ttl, cond="absent")

    def renew(
        self, key: str, value: str, ttl: float, timeout: float, strict: bool = True, adopt: bool = False
    ) -> bool:
        # True only once the renewal is committed: every member then counts the ttl from a
        # moment after our caller's send time (see raft_kv), and a member cut off from the
        # majority cannot get here at all, so it fences.
        if adopt:
            # One command, applied in log order: if the key is still `value` (whoever owns it),
            # it becomes ours, touched now; an expiry or someone else's acquire ordered before
            # it makes the condition fail. The key is never absent in between.
            return self._do("put", key, timeout, value=value, owner=self._id, ttl=ttl,
                            cond="value", arg=value)
        return self._do("renew", key, timeout, value=value, owner=self._id, ttl=ttl, cond="held")

    def take_over(
        self, key: str, value: str, version: str, ttl: float, timeout: float,
        also: Mapping[str, tuple[str, Version]] | None = None,
    ) -> bool:
        """One `take_over` command: applied in log order, so every compare (the key at `version`,
        each also-key at its version or absent) and every write happen in one step; the key
        becomes owned by this instance, touched (stamped) when applied, which on every member is
        after our send time. The previous owner's renewals compare the owner and fail."""
        others = check_also(key, also)
        try:
            v = int(version)
            also_cmd = [[k, new_value, None if t is None else int(t)] for k, (new_value, t) in others.items()]
        except ValueError:
            return False  # not a token this backend handed out: it cannot match
        return self._do("take_over", key, timeout, value=value, owner=self._id, ttl=ttl,
                        cond="version", arg=v, also=also_cmd)

    def release(self, key: str, value: str, timeout: float) -> bool:
        return self._do("delete", key, timeout, cond="value", arg=value)

    # -- shutting down -------------------------------------------------------------------------
    def close(self) -> None:
        """Detach from the raft node (stopping it if this was its last user). Leases are left to
        run out."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        self._node.kv.remove_listener(self._on_change)
        release_node(self._node)


def open_client(cfg: RaftConfig, cluster: str, layout: Layout) -> RaftKV:
    """Keys of the group `cfg` belongs to, reached without becoming a member (for `ctl` and other
    tools running beside an agent that already is one)."""
    return RaftKV(cfg, cluster, layout, voter=False)


def _read_secret(path: Path) -> str:
    try:
        secret = path.read_text().strip()
    except OSError as e:
        raise ConfigError(f"store.raft.password_file: cannot read {path}: {e.strerror}") from None
    if not secret:
        raise ConfigError(f"store.raft.password_file: {path} is empty; put the group's shared secret in it")
    return secret
