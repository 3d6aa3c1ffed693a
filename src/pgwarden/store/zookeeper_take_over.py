"""The ZooKeeper backend's version tokens, and the read-then-transaction step of `take_over`
(`ZooKeeperKV.take_over` owns the sessions around it)."""

from __future__ import annotations

from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError
from kazoo.protocol.states import ZnodeStat

from pgwarden.store.zookeeper_session import _await

Write = tuple[str, bytes, int | None]
"""An also-key of a take-over: (path, new data, data version it must be at; None: absent)."""


def token(stat: ZnodeStat) -> str:
    """A key's version token: its data version; for an ephemeral (leased) node also the zxid
    that created it, `<version>:<czxid>`, since every incarnation of a leased key starts at
    version 0 and a take-over must not take a newer incarnation for the one its caller read."""
    if stat.ephemeralOwner:
        return f"{stat.version}:{stat.czxid}"
    return str(stat.version)


def parse_token(text: str) -> tuple[int, int | None] | None:
    """(version, czxid or None) a token names; None if it is not a token this backend handed out."""
    version_text, sep, czxid_text = text.partition(":")
    try:
        version = int(version_text)
        czxid = int(czxid_text) if sep else None
    except ValueError:
        return None
    if version < 0:  # -1 would mean "any version" to ZooKeeper
        return None
    return version, czxid


def version_of(text: str) -> int | None:
    """The data version a token names (a plain put or delete compares only that)."""
    parsed = parse_token(text)
    return None if parsed is None else parsed[0]


def commit_take_over(
    zk: KazooClient, base: str, path: str, value: str, expected: tuple[int, int | None],
    writes: list[Write], deadline: float,
) -> tuple[int, int] | None:
    """Through `zk` (the new lease's session, whose ephemeral node the key becomes): read the
    lease epoch (the cluster node's data version, bumped by every create of a leased key) and
    the key, in order after a sync; if the key is the incarnation `expected` names (czxid) at
    its version, one transaction deletes it at that version, creates ours, sets the epoch at the
    version read (so a key recreated after our read fails it: see `ZooKeeperKV._adopt`) and
    writes the also-keys (set_data at their version, which bumps it even for the same data;
    create where they must be absent). (zxid of the transaction, previous holder's session) if
    it committed; None if any compare failed."""
    version, czxid = expected
    zk.sync_async(path)  # answers arrive in order: the reads below wait for it
    epoch_r, node_r = zk.get_async(base), zk.get_async(path)
    try:
        _, epoch = _await(epoch_r, deadline)
        _, stat = _await(node_r, deadline)
    except NoNodeError:
        return None  # never create the key: acquire does that
    if stat.version != version or czxid not in (None, stat.czxid):
        return None
    txn = zk.transaction()
    txn.delete(path, version)
    txn.create(path, value.encode(), ephemeral=True)
    txn.set_data(base, b"", epoch.version)
    for other_path, data, other_version in writes:
        if other_version is None:
            txn.create(other_path, data)
        else:
            txn.set_data(other_path, data, other_version)
    results = _await(txn.commit_async(), deadline)
    if any(isinstance(r, Exception) for r in results):
        return None
    return int(results[2].mzxid), int(stat.ephemeralOwner)
