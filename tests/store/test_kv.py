"""The store port itself (`KV`, pgwarden.store.base) on every backend: versions, create-only and
unconditional writes, deletes, and whose a lease is. The documents above it: test_contract.py."""

from __future__ import annotations

import pytest

from pgwarden.store.base import ANY
from tests.support.backends import StoreFactory

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
