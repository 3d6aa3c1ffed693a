"""The store port itself (`KV`, pgwarden.store.base) on every backend: versions, create-only and
unconditional writes, deletes, and whose a lease is. The documents above it: test_contract.py."""

from __future__ import annotations

import threading
import time

import pytest

from pgwarden.store.base import ANY
from tests.support.backends import StoreFactory
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

T = 2.0
TTL = 2.0


def test_versions_are_compare_and_swap(make_store: StoreFactory, cluster: str) -> None:
    kv = make_store(cluster).kv
    assert kv.put("sync", "one", None, T)  # create-only
    assert not kv.put("sync", "two", None, T)
    first = kv.read(T)["sync"]
    assert first.value == "one"
    assert kv.put("sync", "two", first.version, T)
    second = kv.read(T)["sync"]
    assert second.value == "two" and second.version != first.version
    assert not kv.put("sync", "three", first.version, T)  # stale
    assert not kv.put("sync", "three", "not-a-token", T)  # never handed out: never matches
    assert not kv.put("sync", "three", "-1", T)
    assert kv.read(T)["sync"] == second
    assert kv.put("sync", "four", ANY, T)  # whatever is there
    assert kv.put("optime", "5", ANY, T)  # or nothing
    assert kv.read(T)["optime"].value == "5"


def test_delete_by_version_or_unconditionally(make_store: StoreFactory, cluster: str) -> None:
    kv = make_store(cluster).kv
    assert kv.put("failover", "x", None, T)
    version = kv.read(T)["failover"].version
    assert kv.put("failover", "y", version, T)
    assert not kv.delete("failover", version, T)  # stale
    assert "failover" in kv.read(T)
    assert kv.delete("failover", kv.read(T)["failover"].version, T)
    assert "failover" not in kv.read(T)
    assert not kv.delete("failover", ANY, T)  # nothing there
    assert kv.put("failover", "z", ANY, T)
    assert kv.delete("failover", ANY, T)
    assert kv.read(T) == {}


def test_a_key_with_a_ttl_is_written_unconditionally(make_store: StoreFactory, cluster: str) -> None:
    kv = make_store(cluster).kv
    with pytest.raises(ValueError):
        kv.put("members/a", "{}", None, T, ttl=TTL)
    assert kv.put("members/a", "one", ANY, T, ttl=10)
    assert kv.put("members/a", "two", ANY, T, ttl=10)
    assert kv.read(T)["members/a"].value == "two"
    assert kv.delete("members/a", ANY, T)
    assert "members/a" not in kv.read(T)


def test_a_lease_is_its_instance_s(make_store: StoreFactory, cluster: str) -> None:
    a, b = make_store(cluster).kv, make_store(cluster).kv
    assert a.acquire("leader", "a", TTL, T)
    assert not b.acquire("leader", "b", TTL, T)
    assert not b.renew("leader", "a", TTL, T)  # the value alone does not make b the holder
    assert a.renew("leader", "a", TTL, T)
    assert not b.release("leader", "b", T)
    assert a.read(T)["leader"].value == "a"
    assert b.release("leader", "a", T)  # by value: a restarted agent releases its old key
    assert "leader" not in a.read(T)
    assert not a.renew("leader", "a", TTL, T)
    assert not a.release("leader", "a", T)


# -- adopting a key a previous run left (renew(adopt=True), SAFETY rule 5) ------------------------


def test_a_new_instance_adopts_a_key_holding_its_value(make_store: StoreFactory, cluster: str) -> None:
    old, new, reader = make_store(cluster).kv, make_store(cluster).kv, make_store(cluster).kv
    assert old.acquire("leader", "a", TTL, T)
    assert not new.renew("leader", "a", TTL, T)  # without adopt: still not ours
    assert not new.renew("leader", "b", TTL, T, adopt=True)  # another value: never
    assert old.renew("leader", "a", TTL, T)  # ...and the refusal changed nothing
    assert new.renew("leader", "a", TTL, T, adopt=True)
    assert not old.renew("leader", "a", TTL, T)  # the previous holder has lost it
    assert reader.read(T)["leader"].value == "a"
    # Now on the new instance's own lease: plain renewals (and adopting again) keep it, well past
    # the ttl of the old lease, which nothing renews any more.
    end = time.monotonic() + TTL + 1.5
    while time.monotonic() < end:
        assert new.renew("leader", "a", TTL, T)
        reader.wait_for_change(0.4)  # paces the loop
    assert new.renew("leader", "a", TTL, T, adopt=True)
    assert reader.read(T)["leader"].value == "a"
    # And it is a lease of `ttl`: unrenewed, the key lapses.
    wait_for(lambda: "leader" not in reader.read(T), TTL + 4, "the adopted key to lapse")
    assert not new.renew("leader", "a", TTL, T, adopt=True)  # gone: nothing to adopt


def test_adopting_never_creates_a_key(make_store: StoreFactory, cluster: str) -> None:
    a, b = make_store(cluster).kv, make_store(cluster).kv
    assert not b.renew("leader", "a", TTL, T, adopt=True)
    assert "leader" not in a.read(T)
    assert a.acquire("leader", "a", TTL, T)
    assert a.release("leader", "a", T)
    assert not b.renew("leader", "a", TTL, T, adopt=True)
    assert "leader" not in a.read(T)
    assert b.acquire("leader", "b", TTL, T)  # and it did not get in the way of acquiring


def test_adopting_refuses_a_key_taken_since_by_another(make_store: StoreFactory, cluster: str) -> None:
    """The previous run's key expired (here: released) and another member took the key: the
    adopting renewal compares the value in the same atomic step, so it cannot take it back."""
    old, other, new = make_store(cluster).kv, make_store(cluster).kv, make_store(cluster).kv
    assert old.acquire("leader", "a", TTL, T)
    assert old.release("leader", "a", T)
    assert other.acquire("leader", "c", TTL, T)
    assert not new.renew("leader", "a", TTL, T, adopt=True)
    assert other.renew("leader", "c", TTL, T)
    assert new.read(T)["leader"].value == "c"


def test_the_key_never_disappears_while_adopted(make_store: StoreFactory, cluster: str) -> None:
    """Two instances take the key from each other again and again while a third reads all along:
    every read shows it (a delete and a create, even back to back, would show a gap)."""
    a, b, reader = make_store(cluster).kv, make_store(cluster).kv, make_store(cluster).kv
    assert a.acquire("leader", "a", TTL, T)
    stop = threading.Event()
    seen: list[str | None] = []

    def read_all_along() -> None:
        while not stop.is_set():
            entry = reader.read(T).get("leader")
            seen.append(entry.value if entry is not None else None)

    t = threading.Thread(target=read_all_along, daemon=True)
    t.start()
    try:
        for i in range(10):
            taker, loser = (b, a) if i % 2 == 0 else (a, b)
            assert taker.renew("leader", "a", TTL, T, adopt=True)
            assert not loser.renew("leader", "a", TTL, T)
    finally:
        stop.set()
        t.join(10)
    assert seen, "the reader never read"
    assert set(seen) == {"a"}, f"the key was missing from {seen.count(None)} of {len(seen)} reads"
