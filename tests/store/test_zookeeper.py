"""What the ZooKeeper backend adds to the store contract: lease sessions, their length, restarts,
a frozen server, and the znode layout, against a real ZooKeeper of this module's own."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError

from pgwarden.config.schema import ClusterSettings, StoreConfig
from pgwarden.config.validate import validate
from pgwarden.core.model import FailoverRequest, MemberInfo
from pgwarden.store.base import ANY, StoreError, StoreUnavailable
from pgwarden.store.cluster import ClusterStore
from pgwarden.store.documents import LAYOUT, load_member
from pgwarden.store.factory import open_store
from pgwarden.store.zookeeper import ZooKeeperKV
from pgwarden.store.zookeeper_session import _Lease
from tests.support.wait import wait_for
from tests.support.zookeeper import ZooKeeperServer, zookeeper_available

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not zookeeper_available(), reason="Debian's zookeeper package is not installed"),
]

T = 2.0
TTL = 2.0
MAX_SESSION = 6.0  # this module's server grants sessions of at most this long
_names = itertools.count()

Factory = Callable[[str], ClusterStore]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZooKeeperServer]:
    with ZooKeeperServer(tmp_path_factory.mktemp("zk"), max_session_ms=int(MAX_SESSION * 1000)) as zk:
        yield zk


@pytest.fixture
def cluster() -> str:
    return f"zk-{next(_names)}"


@pytest.fixture
def make(server: ZooKeeperServer) -> Iterator[Factory]:
    made: list[ClusterStore] = []

    def make_store(cluster: str) -> ClusterStore:
        store = ClusterStore(ZooKeeperKV([server.endpoint], cluster, LAYOUT))
        made.append(store)
        return store

    yield make_store
    for store in made:
        store.close()


@pytest.fixture
def raw(server: ZooKeeperServer) -> Iterator[KazooClient]:
    """A plain kazoo client, to look at the znodes themselves."""
    client = KazooClient(hosts=server.endpoint)
    client.start(timeout=10)
    yield client
    client.stop()
    client.close()


def member(name: str) -> MemberInfo:
    return MemberInfo(name=name, api_url=f"http://127.0.0.1:80/{name}", host="127.0.0.1", port=5432)


def test_znode_layout(make: Factory, raw: KazooClient, cluster: str) -> None:
    a = make(cluster)
    assert a.acquire_leader("a", TTL, T)
    a.publish_member(member("a"), TTL, T)
    assert a.set_failover(FailoverRequest("failover", None, "a", None), None, T)
    base = f"/pgwarden/{cluster}"
    data, stat = raw.get(f"{base}/leader")
    assert data == b"a" and stat.ephemeralOwner != 0
    data, stat = raw.get(f"{base}/members/a")
    assert load_member(data.decode()) == member("a") and stat.ephemeralOwner != 0
    _, stat = raw.get(f"{base}/failover")
    assert stat.ephemeralOwner == 0
    assert a.snapshot(T).failover is not None
    assert a.snapshot(T).failover.token == str(stat.version)  # type: ignore[union-attr]


def test_factory_opens_zookeeper(server: ZooKeeperServer, cluster: str) -> None:
    store = open_store(validate(StoreConfig, {"zookeeper": {"hosts": [server.endpoint]}}), cluster)
    try:
        assert isinstance(store.kv, ZooKeeperKV)
        assert store.snapshot(T).leader is None
    finally:
        store.close()


def test_close_does_not_release_the_leader(make: Factory, cluster: str) -> None:
    a, b = make(cluster), make(cluster)
    assert a.acquire_leader("a", TTL, T)
    a.close()
    view = b.snapshot(T)
    assert view.leader is not None and view.leader.name == "a"  # a closed agent keeps its key...
    wait_for(lambda: b.snapshot(T).leader is None, TTL + 3, "the abandoned leader key to lapse")


def test_ttl_change_moves_the_key_to_a_session_of_that_length(
    make: Factory, raw: KazooClient, cluster: str
) -> None:
    a, b = make(cluster), make(cluster)
    path = f"/pgwarden/{cluster}/leader"
    assert a.acquire_leader("a", TTL, T)
    _, before = raw.get(path)
    assert a.renew_leader("a", 4.0, T)
    _, after = raw.get(path)
    assert after.ephemeralOwner != before.ephemeralOwner
    assert cast(ZooKeeperKV, a.kv)._leases["leader"].negotiated == 4.0
    for _ in range(3):
        assert a.renew_leader("a", 4.0, T)
    view = b.snapshot(T)
    assert view.leader is not None and view.leader.name == "a"
    assert not b.renew_leader("a", 4.0, T)


def test_a_ttl_longer_than_the_server_allows_is_refused(make: Factory, cluster: str) -> None:
    a = make(cluster)
    with pytest.raises(StoreError) as info:
        a.acquire_leader("a", MAX_SESSION + 4, T)
    assert not isinstance(info.value, StoreUnavailable)  # a configuration error, not an outage
    assert "maxSessionTimeout" in str(info.value)
    assert a.snapshot(T).leader is None


def test_own_writes_and_member_refreshes_do_not_wake(make: Factory, cluster: str) -> None:
    a, b = make(cluster), make(cluster)
    b.publish_member(member("b"), 10, T)
    a.snapshot(T)
    assert not a.wait_for_change(0.3)
    assert a.set_failover(FailoverRequest("failover", None, "a", None), None, T)
    a.set_optime(123, T)
    b.publish_member(member("b"), 10, T)  # a refresh
    assert not a.wait_for_change(0.5)
    a.publish_member(member("a"), 10, T)  # a join counts (even our own: it is another session)
    assert a.wait_for_change(2.0)


def test_a_restarted_agent_replaces_its_lingering_member_key(make: Factory, cluster: str) -> None:
    old, new, reader = make(cluster), make(cluster), make(cluster)
    old.publish_member(member("a"), MAX_SESSION, T)
    old.close()  # the old session lingers for its ttl
    moved = MemberInfo(name="a", api_url="http://127.0.0.1:81/a", host="127.0.0.1", port=5433)
    new.publish_member(moved, TTL, T)
    assert reader.snapshot(T).members == {"a": moved}
    new.publish_member(moved, TTL, T)
    assert reader.snapshot(T).members == {"a": moved}


def test_frozen_server_bounds_every_call(make: Factory, server: ZooKeeperServer, cluster: str) -> None:
    a = make(cluster)
    assert a.acquire_leader("a", MAX_SESSION, T)
    a.snapshot(T)
    calls: list[Callable[[], object]] = [
        lambda: a.renew_leader("a", MAX_SESSION, 0.5),
        lambda: a.snapshot(0.5),
        lambda: a.publish_member(member("a"), MAX_SESSION, 0.5),
        lambda: a.set_settings(ClusterSettings(), None, 0.5),
    ]
    server.pause()
    try:
        for call in calls:
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                call()
            assert time.monotonic() - started < 1.0
    finally:
        server.resume()
    # The session outlived the freeze (the server's clock for it restarts): still the leader.
    wait_for(lambda: a.renew_leader("a", MAX_SESSION, T), 10, "a renewal after the freeze")


def test_server_restart_keeps_sessions_and_watches(
    make: Factory, server: ZooKeeperServer, cluster: str
) -> None:
    a, b = make(cluster), make(cluster)
    assert a.acquire_leader("a", MAX_SESSION, T)
    b.snapshot(T)
    server.stop()
    assert b.wait_for_change(5.0)  # the lost connection wakes the loop
    with pytest.raises(StoreUnavailable):
        a.renew_leader("a", MAX_SESSION, 0.5)
    server.start()
    # The JVM's start and kazoo's reconnect backoff take a while on a loaded machine; the
    # sessions must survive it (MAX_SESSION), which is what this checks, not how fast.
    wait_for(lambda: a.renew_leader("a", MAX_SESSION, T), 30, "a renewal after the restart")
    wait_for(lambda: b.snapshot(T), 30, "the reading session to reconnect")
    while b.wait_for_change(0.2):  # drain wake-ups from the reconnect
        b.snapshot(T)
    assert a.set_failover(FailoverRequest("failover", None, "b", None), None, T)
    assert b.wait_for_change(5.0)
    assert b.snapshot(T).failover is not None


def test_server_path_prefix(server: ZooKeeperServer, raw: KazooClient, cluster: str) -> None:
    store = ClusterStore(ZooKeeperKV([server.endpoint], cluster, LAYOUT, prefix="/other/place/"))
    try:
        assert store.set_initialized("7300000000000000001", T)
        data, _ = raw.get(f"/other/place/{cluster}/initialize")
        assert data == b"7300000000000000001"
    finally:
        store.close()



def test_digest_authentication_keeps_other_clients_out(server: ZooKeeperServer, raw: KazooClient,
                                                       cluster: str) -> None:
    """store.zookeeper.authentication: every node the agent creates (its parents too) carries an
    ACL for its user alone; a client without the password can neither read nor write them."""
    creds = ("pgwarden", "zk-digest-password")
    a = ClusterStore(ZooKeeperKV([server.endpoint], cluster, LAYOUT, "/secured", credentials=creds))
    b = ClusterStore(ZooKeeperKV([server.endpoint], cluster, LAYOUT, "/secured", credentials=creds))
    try:
        assert a.acquire_leader("a", TTL, T)
        view = b.snapshot(T)
        assert view.leader is not None and view.leader.name == "a"
        with pytest.raises(NoAuthError):
            raw.get(f"/secured/{cluster}/leader")
        with pytest.raises(NoAuthError):
            raw.create(f"/secured/{cluster}/intruder", b"x")
        wrong = KazooClient(hosts=server.endpoint, auth_data=[("digest", "pgwarden:guess")])
        wrong.start(timeout=10)
        try:
            with pytest.raises(NoAuthError):
                wrong.get(f"/secured/{cluster}/leader")
        finally:
            wrong.stop()
            wrong.close()
    finally:
        a.close()
        b.close()


class _RacedKV(ZooKeeperKV):
    """Runs `race` once, between an adopting renewal's reads and its transaction: the moment the
    lease epoch exists for (see `ZooKeeperKV._adopt`)."""

    race: Callable[[], None] | None = None

    def _new_lease(self, seconds: float) -> _Lease:
        lease = super()._new_lease(seconds)
        client = lease.client
        transaction = client.transaction

        def raced() -> Any:
            race, self.race = self.race, None
            if race is not None:
                race()
            return transaction()

        client.transaction = raced  # type: ignore[method-assign]
        return lease


def test_adopting_cannot_take_a_key_recreated_meanwhile_at_the_same_version(
    make: Factory, server: ZooKeeperServer, raw: KazooClient, cluster: str
) -> None:
    """The old node expires and another member creates the key (at version 0, as the old one was)
    after the adopter read it: a version check alone would delete the newcomer's node."""
    old, other = make(cluster), make(cluster)
    new = _RacedKV([server.endpoint], cluster, LAYOUT)
    try:
        assert old.acquire_leader("a", TTL, T)
        path = f"/pgwarden/{cluster}/leader"
        assert raw.get(path)[1].version == 0

        def expire_and_take() -> None:
            raw.delete(path)  # as the old session's expiry would
            assert other.acquire_leader("c", TTL, T)
            assert raw.get(path)[1].version == 0

        new.race = expire_and_take
        assert not new.renew("leader", "a", TTL, T, adopt=True)
        assert new.race is None, "the race never ran"
        assert other.renew_leader("c", TTL, T)
        assert raw.get(path)[0] == b"c"
        # Without the race, the same adoption goes through.
        assert other.release_leader("c", T) and old.kv.put("leader", "a", ANY, T)
        assert new.renew("leader", "a", TTL, T, adopt=True)
        assert raw.get(path)[0] == b"a"
    finally:
        new.close()


def test_take_over_cannot_take_a_key_recreated_at_the_same_version(
    make: Factory, server: ZooKeeperServer, raw: KazooClient, cluster: str
) -> None:
    """Every incarnation of a leased key starts at version 0, so its token also names the zxid
    that created it; and a key recreated between the take-over's own read and its transaction
    fails the lease epoch. Either way the newcomer's key (and the also-key) stay untouched."""
    old, other = make(cluster), make(cluster)
    new = _RacedKV([server.endpoint], cluster, LAYOUT)
    path = f"/pgwarden/{cluster}/leader"
    try:
        assert old.acquire_leader("a", TTL, T)
        assert old.kv.put("sync", "s1", None, T)
        seen = old.kv.read(T)
        assert seen["leader"].version.startswith("0:")  # ephemeral: version and czxid
        assert seen["sync"].version == "0"  # persistent: the version alone, as before
        also = {"sync": ("s2", seen["sync"].version)}

        # Recreated before the take-over reads it: the token's czxid no longer matches.
        raw.delete(path)
        assert other.acquire_leader("c", TTL, T)
        assert raw.get(path)[1].version == 0
        assert not new.take_over("leader", "b", seen["leader"].version, TTL, T, also=also)
        assert raw.get(path)[0] == b"c" and other.renew_leader("c", TTL, T)
        assert raw.get(f"/pgwarden/{cluster}/sync")[0] == b"s1"

        # Recreated between its read and its transaction: the lease epoch fails it.
        seen = old.kv.read(T)

        def expire_and_take() -> None:
            raw.delete(path)  # as the holder's session expiry would
            assert old.acquire_leader("a", TTL, T)
            assert raw.get(path)[1].version == 0

        new.race = expire_and_take
        assert not new.take_over("leader", "b", seen["leader"].version, TTL, T, also=also)
        assert new.race is None, "the race never ran"
        assert raw.get(path)[0] == b"a" and old.renew_leader("a", TTL, T)
        assert raw.get(f"/pgwarden/{cluster}/sync")[0] == b"s1"
        # Without a race, the same take-over goes through.
        assert new.take_over("leader", "b", old.kv.read(T)["leader"].version, TTL, T, also=also)
        assert raw.get(path)[0] == b"b" and raw.get(f"/pgwarden/{cluster}/sync")[0] == b"s2"
        assert not old.renew_leader("a", TTL, T)
    finally:
        new.close()
