"""TimedKV: every request of the wrapped KV is reported with its operation, duration and outcome;
results and errors pass through unchanged; the blocking watch is not a request."""

from __future__ import annotations

import pytest

from pgwarden.store.base import ANY, StoreError
from pgwarden.store.cluster import ClusterStore
from pgwarden.store.timed import TimedKV
from tests.support.memkv import MemKV


def test_requests_are_reported_and_pass_through() -> None:
    seen: list[tuple[str, float, bool]] = []
    mem = MemKV("c")
    kv = TimedKV(mem, lambda op, secs, ok: seen.append((op, secs, ok)))
    store = ClusterStore(kv)
    assert store.acquire_leader("n1", 5.0, 1.0)
    assert not kv.acquire("leader", "n2", 5.0, 1.0)  # a lost race is an answer, not an error
    assert kv.put("members/n1", "{}", ANY, 1.0, ttl=5.0)
    assert "leader" in kv.read(1.0)
    assert kv.release("leader", "n1", 1.0)
    kv.wait_for_change(0.01)
    assert [(op, ok) for op, _, ok in seen] == [("acquire", True), ("acquire", True), ("put", True),
                                                ("read", True), ("release", True)]
    assert all(secs >= 0 for _, secs, _ in seen)
    mem.down = True
    with pytest.raises(StoreError):
        kv.read(0.1)
    assert seen[-1][0] == "read" and seen[-1][2] is False
    kv.close()
