"""etcd-specific behaviour: stalled and dead servers, several hosts, restarts, the watch's filter,
lease lengths, and the backend factory."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgwarden.config.errors import ConfigError
from pgwarden.config.schema import EtcdConfig, StoreConfig, ZooKeeperConfig
from pgwarden.core.model import FailoverRequest, MemberInfo
from pgwarden.store.base import ANY, StoreError, StoreUnavailable
from pgwarden.store.cluster import ClusterStore
from pgwarden.store.documents import LAYOUT
from pgwarden.store.etcd import EtcdKV
from pgwarden.store.etcd_auth import enable_auth
from pgwarden.store.factory import open_store
from tests.support.etcd import EtcdServer
from tests.support.ports import free_port
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

T = 2.0


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    """A server of this test's own (these tests stop, freeze and restart it)."""
    with EtcdServer(tmp_path) as server:
        yield server


@pytest.fixture
def stores() -> Iterator[list[ClusterStore]]:
    made: list[ClusterStore] = []
    yield made
    for s in made:
        s.close()


def open_(stores: list[ClusterStore], hosts: list[str], cluster: str = "c") -> ClusterStore:
    s = ClusterStore(EtcdKV(hosts, cluster, LAYOUT))
    stores.append(s)
    return s


def member(name: str) -> MemberInfo:
    return MemberInfo(name=name, api_url="http://127.0.0.1:1", host="127.0.0.1", port=5432)


def test_stalled_server_raises_within_the_timeout(etcd: EtcdServer, stores: list[ClusterStore]) -> None:
    s = open_(stores, [etcd.endpoint])
    assert s.acquire_leader("a", 4, T)
    etcd.pause()
    try:
        for call in (lambda: s.snapshot(0.5), lambda: s.renew_leader("a", 4, 0.5)):
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                call()
            assert time.monotonic() - started < 1.5
    finally:
        etcd.resume()
    wait_for(lambda: s.snapshot(T).leader is not None, 10, "etcd to answer again after SIGCONT")


def test_dead_first_host_is_skipped(etcd: EtcdServer, stores: list[ClusterStore]) -> None:
    dead = f"127.0.0.1:{free_port()}"
    s = open_(stores, [dead, etcd.endpoint])
    started = time.monotonic()
    assert s.snapshot(T).leader is None
    assert s.acquire_leader("a", 4, T)
    assert s.renew_leader("a", 4, T)
    assert time.monotonic() - started < T
    # The watch finds the live host too.
    other = open_(stores, [etcd.endpoint])
    s.snapshot(T)
    assert not s.wait_for_change(0.2)
    assert other.set_failover(FailoverRequest("failover", None, "a", None), None, T)
    assert s.wait_for_change(5)


def test_stalled_first_host_costs_one_call_then_the_next_host_answers(
    tmp_path: Path, stores: list[ClusterStore]
) -> None:
    with EtcdServer(tmp_path, "one") as one, EtcdServer(tmp_path, "two") as two:
        # Two unrelated single-node etcds: enough to see which one the client talks to.
        s = open_(stores, [one.endpoint, two.endpoint])
        s.set_optime(1, T)
        one.pause()
        try:
            with pytest.raises(StoreUnavailable):
                s.snapshot(0.5)
            view = s.snapshot(T)
            assert view.leader_lsn is None  # answered by "two", which never saw the write
        finally:
            one.resume()


def test_restart_server_then_calls_and_watch_recover(etcd: EtcdServer, stores: list[ClusterStore]) -> None:
    a, b = open_(stores, [etcd.endpoint]), open_(stores, [etcd.endpoint])
    a.publish_member(member("a"), 30, T)
    b.snapshot(T)
    assert not b.wait_for_change(0.2)
    etcd.stop()
    with pytest.raises(StoreUnavailable):
        a.snapshot(0.5)
    etcd.start()
    # Pooled connections to the old process are dead; a call must still get through.
    assert set(a.snapshot(T).members) == {"a"}
    assert a.set_failover(FailoverRequest("failover", None, "a", None), None, T)
    assert b.wait_for_change(10), "the watch did not come back after the restart"


def test_own_writes_and_member_refreshes_do_not_wake(etcd: EtcdServer, stores: list[ClusterStore]) -> None:
    a, b = open_(stores, [etcd.endpoint]), open_(stores, [etcd.endpoint])
    b.publish_member(member("b"), 10, T)
    a.snapshot(T)
    assert not a.wait_for_change(0.3)  # b's publish is already in a's snapshot
    a.set_optime(5, T)
    a.publish_member(member("a"), 10, T)
    assert a.acquire_leader("a", 4, T)
    b.publish_member(member("b"), 10, T)  # a refresh of an existing member
    assert not a.wait_for_change(0.5)
    b.publish_member(member("c"), 10, T)  # a new member joining does count
    assert a.wait_for_change(5)


def test_quiet_keys_do_not_wake(etcd: EtcdServer, stores: list[ClusterStore]) -> None:
    """The leader's optime (rewritten every loop) and the history are `quiet`: a replica's
    watch does not wake for them, and a change that counts still wakes it afterwards."""
    a, b = open_(stores, [etcd.endpoint]), open_(stores, [etcd.endpoint])
    a.snapshot(T)
    assert not a.wait_for_change(0.3)  # the watch runs
    b.set_optime(5, T)  # created
    b.set_optime(6, T)  # rewritten
    b.set_history((), T)
    assert not a.wait_for_change(0.5)
    assert a.snapshot(T).leader_lsn == 6  # written all the same
    assert b.acquire_leader("b", 4, T)
    assert a.wait_for_change(5)


def test_changing_ttl_moves_the_leader_to_a_lease_of_the_new_length(
    etcd: EtcdServer, stores: list[ClusterStore]
) -> None:
    a, b = open_(stores, [etcd.endpoint]), open_(stores, [etcd.endpoint])
    assert a.acquire_leader("a", 2, T)
    before = b.snapshot(T).leader
    assert a.renew_leader("a", 6, T)
    after = b.snapshot(T).leader
    assert before is not None and after is not None and after.name == "a"
    assert after.token != before.token  # the key was rewritten on the new lease
    assert a.renew_leader("a", 6, T)
    # Not renewed any more, the key must outlive the old 2 s lease.
    started = time.monotonic()
    wait_for(lambda: b.snapshot(T).leader is None, 10, "leader key to expire")
    assert time.monotonic() - started > 3.5


def test_close_does_not_release_the_leader(etcd: EtcdServer, stores: list[ClusterStore]) -> None:
    a, b = open_(stores, [etcd.endpoint]), open_(stores, [etcd.endpoint])
    assert a.acquire_leader("a", 3, T)
    a.snapshot(T)
    assert not a.wait_for_change(0.1)  # start a's watch thread, so close() has one to stop
    a.close()
    view = b.snapshot(T)
    assert view.leader is not None and view.leader.name == "a"
    wait_for(lambda: b.snapshot(T).leader is None, 8, "leader key to expire after close")


def test_invalid_stored_settings_fall_back_to_defaults_but_keep_the_token(
    etcd: EtcdServer, stores: list[ClusterStore]
) -> None:
    a = open_(stores, [etcd.endpoint])
    assert a.kv.put("config", '{"ttl": 1, "nonsense": true}', ANY, T)
    view = a.snapshot(T)
    assert view.settings.ttl == 4.0 and view.settings_token != ""
    assert a.kv.put("members/bad", "not json", ANY, T)
    a.publish_member(member("a"), 10, T)
    assert set(a.snapshot(T).members) == {"a"}


def test_factory_opens_etcd(etcd: EtcdServer) -> None:
    store = open_store(StoreConfig(etcd=EtcdConfig(hosts=[etcd.endpoint], prefix="/other")), "c")
    try:
        assert isinstance(store.kv, EtcdKV) and store.cluster == "c"
        assert store.acquire_leader("a", 4, T)
    finally:
        store.close()


def test_factory_reports_a_missing_zookeeper_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    # Block the module (whether or not it exists yet) to see the message an operator gets.
    monkeypatch.setitem(sys.modules, "pgwarden.store.zookeeper", None)
    with pytest.raises(ConfigError, match="zookeeper"):
        open_store(StoreConfig(zookeeper=ZooKeeperConfig(hosts=["127.0.0.1:2181"])), "c")


def test_authentication(etcd: EtcdServer, stores: list[ClusterStore]) -> None:
    """store.etcd.authentication against an etcd with auth on (as `local up` runs it): the user
    works through a token, an expired or revoked token is replaced, and a missing or wrong
    password is one clear error naming the setting."""
    enable_auth([etcd.endpoint], "root-password-1", "pgw", "user-password-1", "/pgwarden", 10.0)
    enable_auth([etcd.endpoint], "root-password-1", "pgw", "user-password-1", "/pgwarden", 10.0)  # idempotent
    user = ClusterStore(EtcdKV([etcd.endpoint], "c", LAYOUT, credentials=("pgw", "user-password-1")))
    stores.append(user)
    assert user.acquire_leader("a", 4.0, T)
    gw = user.kv._gw  # type: ignore[attr-defined]
    gw._token = "bogus.token"  # as after etcd restarted and forgot its simple tokens
    assert user.renew_leader("a", 4.0, T)
    assert user.snapshot(T).leader is not None
    with pytest.raises(StoreError, match=r"authentication enabled.*store\.etcd\.authentication"):
        open_(stores, [etcd.endpoint]).snapshot(T)
    wrong = ClusterStore(EtcdKV([etcd.endpoint], "c", LAYOUT, credentials=("pgw", "guess")))
    stores.append(wrong)
    with pytest.raises(StoreError, match=r"refused the credentials of user .pgw.*store\.etcd\.auth"):
        wrong.snapshot(T)
    # The user's role reaches only pgwarden's prefix.
    outside = ClusterStore(EtcdKV([etcd.endpoint], "c", LAYOUT, prefix="/other",
                                  credentials=("pgw", "user-password-1")))
    stores.append(outside)
    with pytest.raises(StoreError, match="permission denied"):
        outside.snapshot(T)


def test_an_unchanged_member_key_is_renewed_not_rewritten(
        etcd: EtcdServer, stores: list[ClusterStore]) -> None:
    """Publishing the value the last read showed only keeps the key's lease alive (no raft write:
    its revision stays); any other value, or the same one after a write since that read, lands."""
    a, b = open_(stores, [etcd.endpoint]), open_(stores, [etcd.endpoint])
    kv = a.kv
    assert isinstance(kv, EtcdKV)
    ttl = 2.0
    a.publish_member(member("a"), ttl, T)
    before = kv.read(T)["members/a"].version
    deadline = time.monotonic() + ttl + 2.0
    while time.monotonic() < deadline:  # past the ttl: the key lives only if the lease was renewed
        a.publish_member(member("a"), ttl, T)
        time.sleep(0.5)
    assert kv.read(T)["members/a"].version == before  # never rewritten
    assert b.snapshot(T).members == {"a": member("a")}
    moved = MemberInfo(name="a", api_url="http://127.0.0.1:1", host="127.0.0.1", port=5433)
    a.publish_member(moved, ttl, T)  # a new value is written
    a.publish_member(member("a"), ttl, T)  # and back, with no read in between: written too
    assert b.snapshot(T).members == {"a": member("a")}
    assert kv.read(T)["members/a"].version != before
    a.delete_member("a", T)  # a key deleted since the last read is written again
    a.publish_member(member("a"), ttl, T)
    assert b.snapshot(T).members == {"a": member("a")}


def test_values_outside_ascii_round_trip(etcd: EtcdServer, stores: list[ClusterStore]) -> None:
    """The gateway's JSON (msgspec, UTF-8 on the wire where the json module escaped to ASCII)
    carries any text, and a password outside ASCII authenticates."""
    kv = open_(stores, [etcd.endpoint]).kv
    text = 'Grüße, 東京, "quoted" \\ and \u2028'
    assert kv.put("history", text, ANY, T)
    assert kv.read(T)["history"].value == text
    enable_auth([etcd.endpoint], "root-password-1", "pgw", "pässwörd-1", "/pgwarden", 10.0)
    user = ClusterStore(EtcdKV([etcd.endpoint], "c", LAYOUT, credentials=("pgw", "pässwörd-1")))
    stores.append(user)
    assert user.kv.read(T)["history"].value == text


def test_reads_decode_what_changed_and_keep_only_the_last_reads_text(
        etcd: EtcdServer, stores: list[ClusterStore]) -> None:
    kv = open_(stores, [etcd.endpoint]).kv
    assert isinstance(kv, EtcdKV)
    kv.put("history", "one", ANY, T)
    kv.put("optime", "members/x", ANY, T)  # a value that is some other key's text
    assert {k: e.value for k, e in kv.read(T).items()} == {"history": "one", "optime": "members/x"}
    kv.put("history", "two", ANY, T)
    kv.put("members/x", "history", ANY, T)
    got = {k: e.value for k, e in kv.read(T).items()}
    assert got == {"history": "two", "optime": "members/x", "members/x": "history"}
    kv.delete("members/x", ANY, T)
    kv.put("history", "one", ANY, T)
    assert {k: e.value for k, e in kv.read(T).items()} == {"history": "one", "optime": "members/x"}
    keys, values = kv._decoded
    assert sorted(keys.values()) == ["history", "optime"] and sorted(values.values()) == ["members/x", "one"]
