"""`KV.take_over` on every backend (SAFETY rule 16's confirmed-crash fast path): a leased key taken
from its live holder by a compare-and-swap on the version a read saw, with other keys compared and
rewritten in the same atomic step. `ClusterStore.take_over_leader` is checked at the end."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping

import pytest

from pgwarden.core.model import SyncState
from pgwarden.store.base import ANY, KV, Entry
from tests.support.backends import StoreFactory
from tests.support.memkv import MemKV
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

T = 2.0
TTL = 2.0  # the old holder's lease
NEW_TTL = 6.0  # the taker's: longer, so the old lease's expiry falls well inside it


def _token(kv: KV, key: str) -> str:
    return kv.read(T)[key].version


def test_take_over_a_key_whose_lease_still_runs(make_store: StoreFactory, cluster: str) -> None:
    old, new, reader = make_store(cluster).kv, make_store(cluster).kv, make_store(cluster).kv
    old_sent = time.monotonic()
    assert old.acquire("leader", "a", TTL, T)
    token = _token(reader, "leader")
    assert old.renew("leader", "a", TTL, T)  # a renewal is no write: the token still holds
    sent = time.monotonic()
    assert new.take_over("leader", "b", token, NEW_TTL, T)
    assert reader.read(T)["leader"].value == "b"
    assert not old.renew("leader", "a", TTL, T)  # the previous holder has lost it
    assert not old.release("leader", "a", T)  # ...and cannot delete it
    assert reader.read(T)["leader"].value == "b"
    # The old lease runs out (nothing renews it now) well inside the new one: every read until
    # send time + NEW_TTL still shows our key.
    old_gone = old_sent + TTL + 1.5
    until = sent + NEW_TTL - 0.5
    assert old_gone < until
    while time.monotonic() < until:
        entry = reader.read(T).get("leader")
        assert entry is not None and entry.value == "b", f"gone {time.monotonic() - sent:.1f} s after"
        reader.wait_for_change(0.3)  # paces the loop
    assert new.renew("leader", "b", NEW_TTL, T)  # ours to renew...
    assert new.release("leader", "b", T)  # ...and to release
    assert "leader" not in reader.read(T)


def test_a_taken_key_lapses_on_the_taker_s_lease(make_store: StoreFactory, cluster: str) -> None:
    old, new, reader = make_store(cluster).kv, make_store(cluster).kv, make_store(cluster).kv
    assert old.acquire("leader", "a", NEW_TTL, T)  # a long lease: it would outlive the test
    assert new.take_over("leader", "b", _token(reader, "leader"), TTL, T)
    assert new.renew("leader", "b", TTL, T)
    wait_for(lambda: "leader" not in reader.read(T), TTL + 4, "the taken key to lapse unrenewed")
    assert not new.renew("leader", "b", TTL, T)


def test_a_stale_token_changes_nothing(make_store: StoreFactory, cluster: str) -> None:
    """The key was released and re-acquired (same value, same holder) after the read: the token
    names the old incarnation, so the take-over fails, and the also-key is left alone."""
    old, new, reader = make_store(cluster).kv, make_store(cluster).kv, make_store(cluster).kv
    assert old.acquire("leader", "a", TTL, T)
    assert old.put("sync", "s1", None, T)
    seen = reader.read(T)
    assert old.release("leader", "a", T) and old.acquire("leader", "a", TTL, T)
    after = reader.read(T)
    assert not new.take_over("leader", "b", seen["leader"].version, TTL, T,
                             also={"sync": ("s2", seen["sync"].version)})
    assert reader.read(T) == after
    assert old.renew("leader", "a", TTL, T)
    # Moved onto another instance's lease (adopted by a restarted holder): stale as well.
    token = _token(reader, "leader")
    adopter = make_store(cluster).kv
    assert adopter.renew("leader", "a", TTL, T, adopt=True)
    assert not new.take_over("leader", "b", token, TTL, T)
    assert adopter.renew("leader", "a", TTL, T)
    assert reader.read(T)["leader"].value == "a"
    assert not new.take_over("leader", "b", "not-a-token", TTL, T)
    assert not new.take_over("leader", "b", "-1", TTL, T)


def test_an_also_key_moved_since_the_read_changes_nothing(make_store: StoreFactory, cluster: str) -> None:
    old, new, reader = make_store(cluster).kv, make_store(cluster).kv, make_store(cluster).kv
    assert old.acquire("leader", "a", TTL, T)
    assert old.put("sync", "s1", None, T)
    seen = reader.read(T)
    assert old.put("sync", "s1b", seen["sync"].version, T)  # the old leader moves the sync set
    after = reader.read(T)
    assert not new.take_over("leader", "b", seen["leader"].version, TTL, T,
                             also={"sync": ("s2", seen["sync"].version)})
    assert reader.read(T) == after
    assert not new.take_over("leader", "b", seen["leader"].version, TTL, T,
                             also={"sync": ("s2", None)})  # "absent", but it exists
    assert not new.take_over("leader", "b", seen["leader"].version, TTL, T,
                             also={"sync": ("s2", "not-a-token")})
    assert old.delete("sync", ANY, T)
    assert not new.take_over("leader", "b", seen["leader"].version, TTL, T,
                             also={"sync": ("s2", after["sync"].version)})  # gone since
    assert "sync" not in reader.read(T)
    assert reader.read(T)["leader"] == after["leader"]
    assert old.renew("leader", "a", TTL, T)  # still the old holder's
    with pytest.raises(ValueError):
        new.take_over("leader", "b", seen["leader"].version, TTL, T, also={"sync": ("s2", ANY)})


def test_an_also_key_gets_a_new_version_even_with_the_same_value(
    make_store: StoreFactory, cluster: str
) -> None:
    old, new, reader = make_store(cluster).kv, make_store(cluster).kv, make_store(cluster).kv
    assert old.acquire("leader", "a", TTL, T)
    assert old.put("sync", "s1", None, T)
    seen = reader.read(T)
    assert new.take_over("leader", "b", seen["leader"].version, TTL, T,
                         also={"sync": ("s1", seen["sync"].version)})
    now = reader.read(T)
    assert now["leader"].value == "b" and now["sync"].value == "s1"
    assert now["sync"].version != seen["sync"].version
    assert not old.put("sync", "shrunk", seen["sync"].version, T)  # the old leader's token is dead
    assert reader.read(T)["sync"] == now["sync"]
    # An absent also-key is created, in the same step.
    assert new.release("leader", "b", T) and old.acquire("leader", "a", TTL, T)
    assert old.delete("sync", ANY, T)
    assert new.take_over("leader", "b", _token(reader, "leader"), TTL, T, also={"sync": ("s3", None)})
    now = reader.read(T)
    assert now["leader"].value == "b" and now["sync"].value == "s3"
    assert new.renew("leader", "b", TTL, T)


def test_take_over_never_creates_the_key(make_store: StoreFactory, cluster: str) -> None:
    a, b, reader = make_store(cluster).kv, make_store(cluster).kv, make_store(cluster).kv
    assert a.put("sync", "s1", None, T)
    sync = _token(reader, "sync")
    assert not b.take_over("leader", "b", "1", TTL, T, also={"sync": ("s2", sync)})
    assert a.acquire("leader", "a", TTL, T)
    token = _token(reader, "leader")
    assert a.release("leader", "a", T)
    assert not b.take_over("leader", "b", token, TTL, T, also={"sync": ("s2", sync)})
    seen = reader.read(T)
    assert "leader" not in seen and seen["sync"].value == "s1" and seen["sync"].version == sync
    assert a.acquire("leader", "a", TTL, T)  # nothing was left in the way
    assert a.renew("leader", "a", TTL, T)


def _race(racers: list[KV], seen: Mapping[str, Entry]) -> dict[int, bool]:
    """Every racer takes the leader key over on the same tokens, all let go at once."""
    start = threading.Barrier(len(racers))
    won: dict[int, bool] = {}

    def race(i: int, kv: KV) -> None:
        start.wait(T)
        won[i] = kv.take_over("leader", f"r{i}", seen["leader"].version, TTL, T,
                              also={"sync": (f"by r{i}", seen["sync"].version)})

    threads = [threading.Thread(target=race, args=(i, kv)) for i, kv in enumerate(racers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(3 * T)
    return won


def test_racing_take_overs_on_one_token_have_at_most_one_winner(
    make_store: StoreFactory, cluster: str
) -> None:
    old, reader = make_store(cluster).kv, make_store(cluster).kv
    racers = [make_store(cluster).kv for _ in range(3)]
    for round_ in range(4):
        assert old.acquire("leader", "old", TTL, T), f"round {round_}"
        assert old.put("sync", f"s{round_}", ANY, T)
        seen = reader.read(T)
        won = _race(racers, seen)
        assert len(won) == len(racers), "a racer never finished"
        winners = [i for i, ok in won.items() if ok]
        assert len(winners) <= 1, f"round {round_}: {winners} all took the key"
        now = reader.read(T)
        if winners:
            w = winners[0]
            assert now["leader"].value == f"r{w}" and now["sync"].value == f"by r{w}"
            assert racers[w].renew("leader", f"r{w}", TTL, T)
            assert racers[w].release("leader", f"r{w}", T)
        for i, kv in enumerate(racers):
            if i not in winners:
                assert not kv.renew("leader", f"r{i}", TTL, T)
        if not winners:
            assert now == seen
            assert old.release("leader", "old", T)
        assert not old.renew("leader", "old", TTL, T)


def test_take_over_leader_rewrites_the_sync_document(make_store: StoreFactory, cluster: str) -> None:
    old, new, other = make_store(cluster), make_store(cluster), make_store(cluster)
    assert old.acquire_leader("a", TTL, T)
    assert old.set_sync(SyncState("a", frozenset({"b", "c"}), 2), None, T)
    view = other.snapshot(T)
    assert view.leader is not None and view.sync is not None
    same = SyncState("b", frozenset({"b", "c"}), 2)
    assert new.take_over_leader("b", view.leader.token, same, view.sync.token, TTL, T)
    now = other.snapshot(T)
    assert now.leader is not None and now.leader.name == "b"
    assert now.sync is not None and now.sync.leader == "b" and now.sync.members == same.members
    # The old leader's compare-and-swap on the token it read no longer shrinks the set.
    assert not old.set_sync(SyncState("a", frozenset(), 0), view.sync.token, T)
    assert not old.renew_leader("a", TTL, T)
    assert new.renew_leader("b", TTL, T)
    # Without a sync state the document is neither compared nor written.
    assert not new.take_over_leader("c", view.leader.token, None, None, TTL, T)  # stale leader token
    assert other.take_over_leader("c", now.leader.token, None, "stale-or-not", TTL, T)
    last = new.snapshot(T)
    assert last.leader is not None and last.leader.name == "c"
    assert last.sync == now.sync


def test_the_raft_group_is_not_offered_the_fast_path() -> None:
    """A raft member running an older pgwarden skips the take-over command, so the agents never
    gather crash evidence on raft (the runner checks `take_over_agreed`); the wrapper keeps it."""
    from pgwarden.store.etcd import EtcdKV
    from pgwarden.store.raft import RaftKV
    from pgwarden.store.timed import TimedKV
    from pgwarden.store.zookeeper import ZooKeeperKV
    assert RaftKV.take_over_agreed is False
    assert EtcdKV.take_over_agreed and ZooKeeperKV.take_over_agreed
    inner = MemKV("c")
    inner.take_over_agreed = False
    assert TimedKV(inner, lambda op, seconds, ok: None).take_over_agreed is False
