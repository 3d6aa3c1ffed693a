"""The store port's guarantees (pgwarden.store.base), checked against every backend on a real server."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from pgwarden.config.load import replace
from pgwarden.config.schema import ClusterSettings, SyncMode
from pgwarden.config.validate import validate
from pgwarden.core.model import FailoverRequest, HistoryEntry, MemberInfo, Role, SiteState, SyncState, Tags
from pgwarden.store.base import StoreUnavailable
from pgwarden.store.cluster import ClusterStore
from tests.support.backends import OPENERS, StoreFactory
from tests.support.ports import free_port
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

T = 2.0  # per-call deadline: generous on a loaded 2-core box, still bounded
TTL = 2.0  # the shortest lease the config allows


def member(name: str, **kw: object) -> MemberInfo:
    base: dict[str, object] = {
        "name": name, "api_url": f"http://127.0.0.1:80/{name}", "host": "127.0.0.1", "port": 5432,
    }
    base.update(kw)
    return MemberInfo(**base)  # type: ignore[arg-type]


# -- the leader lease --------------------------------------------------------------------------


def test_acquire_is_exclusive(make_store: StoreFactory, cluster: str) -> None:
    a, b = make_store(cluster), make_store(cluster)
    assert a.acquire_leader("a", TTL, T)
    assert not b.acquire_leader("b", TTL, T)
    assert not a.acquire_leader("a", TTL, T)  # held, even by the same name: still no
    view = b.snapshot(T)
    assert view.leader is not None and view.leader.name == "a"


def test_renew_is_true_only_while_held(make_store: StoreFactory, cluster: str) -> None:
    a, b = make_store(cluster), make_store(cluster)
    assert not a.renew_leader("a", TTL, T)  # never acquired
    assert a.acquire_leader("a", TTL, T)
    for _ in range(3):
        assert a.renew_leader("a", TTL, T)
    assert not b.renew_leader("b", TTL, T)
    assert not b.renew_leader("a", TTL, T)  # the name alone does not make b the holder


def test_release_only_by_the_holder(make_store: StoreFactory, cluster: str) -> None:
    a, b = make_store(cluster), make_store(cluster)
    assert a.acquire_leader("a", TTL, T)
    assert not b.release_leader("b", T)
    view = b.snapshot(T)
    assert view.leader is not None and view.leader.name == "a"
    assert a.release_leader("a", T)
    assert b.snapshot(T).leader is None
    assert not a.renew_leader("a", TTL, T)
    assert b.acquire_leader("b", TTL, T)
    assert not a.release_leader("a", T)


def test_expired_leader_wakes_another_instance(make_store: StoreFactory, cluster: str) -> None:
    a, b = make_store(cluster), make_store(cluster)
    assert a.acquire_leader("a", TTL, T)
    assert b.snapshot(T).leader is not None
    started = time.monotonic()
    # a stops renewing. b's wait must end because of the expiry, not its own timeout.
    while True:
        left = TTL + 3 - (time.monotonic() - started)
        assert left > 0, "the leader key did not expire within ttl + 3 s"
        assert b.wait_for_change(left), "wait_for_change timed out instead of seeing the expiry"
        if b.snapshot(T).leader is None:
            break
    assert time.monotonic() - started < TTL + 3
    assert not a.renew_leader("a", TTL, T)
    assert b.acquire_leader("b", TTL, T)
    view = a.snapshot(T)
    assert view.leader is not None and view.leader.name == "b"


def test_released_leader_wakes_another_instance(make_store: StoreFactory, cluster: str) -> None:
    a, b = make_store(cluster), make_store(cluster)
    assert a.acquire_leader("a", TTL, T)
    b.snapshot(T)
    assert not b.wait_for_change(0.3)  # nothing happened since b's snapshot
    assert a.release_leader("a", T)
    started = time.monotonic()
    assert b.wait_for_change(5.0)
    assert time.monotonic() - started < 2.0
    assert b.snapshot(T).leader is None


def test_renewal_keeps_the_key_past_its_ttl(make_store: StoreFactory, cluster: str) -> None:
    a, b = make_store(cluster), make_store(cluster)
    assert a.acquire_leader("a", TTL, T)
    end = time.monotonic() + TTL * 2
    while time.monotonic() < end:
        assert a.renew_leader("a", TTL, T)
        b.wait_for_change(0.5)  # paces the loop; also shows a renewal is not a change worth waking for
    view = b.snapshot(T)
    assert view.leader is not None and view.leader.name == "a"


# -- members -----------------------------------------------------------------------------------


def test_member_publish_update_and_expiry(make_store: StoreFactory, cluster: str) -> None:
    a, b = make_store(cluster), make_store(cluster)
    info = member("a", role=Role.REPLICA, state="running", running=True, timeline=3, lsn=123456,
                  received_lsn=123456, replayed_lsn=123000, upstream="b",
                  tags=Tags(nofailover=True, failover_priority=0), agent_pid=11, pg_version=160004)
    a.publish_member(info, TTL, T)
    assert b.snapshot(T).members == {"a": info}
    moved = member("a", role=Role.PRIMARY, state="running", running=True, lsn=999)
    a.publish_member(moved, TTL, T)
    a.publish_member(moved, TTL, T)
    assert b.snapshot(T).members == {"a": moved}
    # a stops publishing: its key goes away by itself.
    wait_for(lambda: not b.snapshot(T).members, TTL + 3, "member key to expire")


def test_members_of_several_instances_and_delete(make_store: StoreFactory, cluster: str) -> None:
    a, b = make_store(cluster), make_store(cluster)
    a.publish_member(member("a"), 10, T)
    b.publish_member(member("b"), 10, T)
    assert set(a.snapshot(T).members) == {"a", "b"}
    b.delete_member("b", T)
    assert set(a.snapshot(T).members) == {"a"}
    a.delete_member("a", T)
    a.delete_member("nobody", T)  # deleting what is not there is fine
    assert not b.snapshot(T).members


# -- bootstrap ---------------------------------------------------------------------------------


def test_init_lock_is_exclusive_and_initialize_is_create_only(make_store: StoreFactory, cluster: str) -> None:
    a, b = make_store(cluster), make_store(cluster)
    view = a.snapshot(T)
    assert view.initialized is None and view.init_holder is None
    assert a.take_init_lock("a", 10, T)
    assert not b.take_init_lock("b", 10, T)
    assert b.snapshot(T).init_holder == "a"
    b.release_init_lock("b", T)  # not b's: no effect
    assert b.snapshot(T).init_holder == "a"
    assert a.set_initialized("7300000000000000001", T)
    assert not b.set_initialized("7300000000000000002", T)
    assert not a.set_initialized("7300000000000000001", T)
    a.release_init_lock("a", T)
    view = b.snapshot(T)
    assert view.initialized == "7300000000000000001"
    assert view.init_holder is None


def test_init_lock_expires(make_store: StoreFactory, cluster: str) -> None:
    a, b = make_store(cluster), make_store(cluster)
    assert a.take_init_lock("a", TTL, T)
    wait_for(lambda: b.snapshot(T).init_holder is None, TTL + 3, "init lock to expire")
    assert b.take_init_lock("b", TTL, T)


# -- compare-and-swap state --------------------------------------------------------------------


def test_settings_cas(make_store: StoreFactory, cluster: str) -> None:
    a, b = make_store(cluster), make_store(cluster)
    view = a.snapshot(T)
    assert view.settings == ClusterSettings()
    assert view.settings_token == ""
    first = validate(ClusterSettings, {"ttl": 10, "loop_wait": 2})
    assert a.set_settings(first, view.settings_token, T)  # "" = not in the store yet = create
    assert not b.set_settings(first, None, T)  # create-only loses once it exists
    view = b.snapshot(T)
    assert view.settings == first and view.settings_token != ""
    second = replace(first, paused=True)
    assert b.set_settings(second, view.settings_token, T)
    third = replace(first, synchronous_mode=SyncMode.ON)
    assert not a.set_settings(third, view.settings_token, T)  # stale token
    after = a.snapshot(T)
    assert after.settings == second
    assert after.settings_token not in ("", view.settings_token)


def test_sync_cas(make_store: StoreFactory, cluster: str) -> None:
    a, b = make_store(cluster), make_store(cluster)
    assert a.snapshot(T).sync is None
    s1 = SyncState("a", frozenset({"b"}), 1)
    assert a.set_sync(s1, None, T)
    assert not b.set_sync(SyncState("b", frozenset(), 0), None, T)
    got = b.snapshot(T).sync
    assert got is not None and (got.leader, got.members, got.quorum) == ("a", frozenset({"b"}), 1)
    s2 = SyncState("a", frozenset({"b", "c"}), 1)
    assert b.set_sync(s2, got.token, T)
    assert not a.set_sync(SyncState("a", frozenset(), 0), got.token, T)
    now = a.snapshot(T).sync
    assert now is not None and now.members == frozenset({"b", "c"}) and now.token != got.token


def test_site_document_cas(make_store: StoreFactory, cluster: str) -> None:
    """The site epoch (rule 18) changes only by compare-and-swap on the last snapshot's token."""
    a, b = make_store(cluster), make_store(cluster)
    first = a.snapshot(T).site
    assert (first.epoch, first.peers, first.cluster) == (0, (), cluster)
    assert a.set_site(SiteState(1, ("http://b1:8008",)), None, T)
    assert not b.set_site(SiteState(7), None, T)  # create-only lost
    got = b.snapshot(T).site
    assert (got.epoch, got.peers) == (1, ("http://b1:8008",))
    assert b.set_site(SiteState(2, got.peers), got.token, T)
    assert not a.set_site(SiteState(9), got.token, T)  # stale token
    assert a.snapshot(T).site.epoch == 2


def test_failover_cas_and_clear(make_store: StoreFactory, cluster: str) -> None:
    a, b = make_store(cluster), make_store(cluster)
    assert a.snapshot(T).failover is None
    req = FailoverRequest("switchover", "a", "b", 1_900_000_000.5)
    assert a.set_failover(req, None, T)
    assert not b.set_failover(FailoverRequest("failover", None, "c", None), None, T)
    got = b.snapshot(T).failover
    assert got is not None
    assert (got.kind, got.leader, got.candidate) == ("switchover", "a", "b")
    assert got.scheduled_at == 1_900_000_000.5
    assert b.set_failover(FailoverRequest("failover", None, "c", None), got.token, T)
    assert not a.set_failover(req, got.token, T)
    a.clear_failover(T)
    assert b.snapshot(T).failover is None
    a.clear_failover(T)  # clearing nothing is fine
    assert b.set_failover(req, None, T)


# -- reading everything at once ----------------------------------------------------------------


def test_snapshot_round_trips_everything(make_store: StoreFactory, cluster: str) -> None:
    a, b = make_store(cluster), make_store(cluster)
    settings = validate(ClusterSettings,
        {"ttl": 8, "synchronous_mode": "quorum", "synchronous_node_count": 2,
         "parameters": {"max_connections": 200, "wal_level": "replica"}}
    )
    history = (
        HistoryEntry(1, 0x3000060, "no recovery target specified", 1_700_000_000.0, "a"),
        HistoryEntry(2, 0x5000000, "switchover", None, None),
    )
    assert a.take_init_lock("a", 10, T)
    assert a.set_initialized("7300000000000000001", T)
    assert a.set_settings(settings, None, T)
    assert a.acquire_leader("a", 10, T)
    a.publish_member(member("a", role=Role.PRIMARY, lsn=0x5000100), 10, T)
    b.publish_member(member("b", role=Role.REPLICA, received_lsn=0x5000000), 10, T)
    assert a.set_sync(SyncState("a", frozenset({"b"}), 1), None, T)
    assert a.set_failover(FailoverRequest("switchover", "a", "b", None), None, T)
    a.set_history(history, T)
    a.set_optime(0x5000100, T)

    view = b.snapshot(T)
    assert view.initialized == "7300000000000000001"
    assert view.init_holder == "a"
    assert view.settings == settings and view.settings_token
    assert view.leader is not None and view.leader.name == "a" and view.leader.token
    assert view.members == {
        "a": member("a", role=Role.PRIMARY, lsn=0x5000100),
        "b": member("b", role=Role.REPLICA, received_lsn=0x5000000),
    }
    assert view.sync is not None
    assert (view.sync.leader, view.sync.members, view.sync.quorum) == ("a", frozenset({"b"}), 1)
    assert view.failover is not None
    assert (view.failover.kind, view.failover.leader, view.failover.candidate) == ("switchover", "a", "b")
    assert view.history == history
    assert view.leader_lsn == 0x5000100

    a.set_history((), T)
    a.set_optime(0x6000000, T)
    view = b.snapshot(T)
    assert view.history == () and view.leader_lsn == 0x6000000


def test_clusters_do_not_see_each_other(make_store: StoreFactory, cluster: str) -> None:
    a, other = make_store(cluster), make_store(cluster + "x")
    assert a.acquire_leader("a", TTL, T)
    a.publish_member(member("a"), TTL, T)
    view = other.snapshot(T)
    assert view.leader is None and not view.members
    assert other.acquire_leader("o", TTL, T)


def test_wait_for_change_times_out_when_nothing_changes(make_store: StoreFactory, cluster: str) -> None:
    a = make_store(cluster)
    a.snapshot(T)
    started = time.monotonic()
    assert not a.wait_for_change(0.5)
    assert 0.4 < time.monotonic() - started < 1.5


def test_change_by_another_instance_wakes_the_waiter(make_store: StoreFactory, cluster: str) -> None:
    a, b = make_store(cluster), make_store(cluster)
    a.snapshot(T)
    assert not a.wait_for_change(0.2)  # the watch is running now
    assert b.set_failover(FailoverRequest("failover", None, "a", None), None, T)
    started = time.monotonic()
    assert a.wait_for_change(5.0)
    assert time.monotonic() - started < 2.0


def test_interrupt_ends_a_wait_and_loses_no_change(make_store: StoreFactory, cluster: str) -> None:
    """The agent waits out its loop in one `wait_for_change` and interrupts it for a command or a
    stop (agent/runner.py `_wait`): an interrupt must end the wait at once, say "no change", and
    leave a change it did not report pending for the next wait."""
    a, b = make_store(cluster), make_store(cluster)
    if not a.interruptible:
        pytest.skip("this backend is polled, not interrupted")
    a.snapshot(T)
    assert not a.wait_for_change(0.2)  # the watch is running now
    threading.Timer(0.3, a.interrupt).start()
    started = time.monotonic()
    assert not a.wait_for_change(10.0)
    assert 0.2 < time.monotonic() - started < 3.0
    a.interrupt()  # before the wait: that wait returns at once, the next one waits again
    started = time.monotonic()
    assert not a.wait_for_change(10.0)
    assert not a.wait_for_change(0.3)
    assert time.monotonic() - started < 3.0
    assert b.set_failover(FailoverRequest("failover", None, "a", None), None, T)
    wait_for(lambda: _pending_after_interrupt(a), 5.0, "the change to reach a's watch")
    assert not a.wait_for_change(0.3)  # reported once, then no longer news


def _pending_after_interrupt(store: ClusterStore) -> bool:
    store.interrupt()
    return store.wait_for_change(0.0)


# -- an unreachable store ----------------------------------------------------------------------


@pytest.mark.parametrize("timeout", [0.5, 1.0])
def test_unreachable_store_raises_within_the_timeout(backend: str, timeout: float) -> None:
    store = OPENERS[backend]([f"127.0.0.1:{free_port()}"], "nowhere")
    try:
        calls: list[Callable[[], object]] = [
            lambda: store.snapshot(timeout),
            lambda: store.acquire_leader("a", TTL, timeout),
            lambda: store.publish_member(member("a"), TTL, timeout),
            lambda: store.set_settings(ClusterSettings(), None, timeout),
        ]
        for call in calls:
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                call()
            assert time.monotonic() - started < timeout + 0.5
    finally:
        store.close()


def test_a_changed_member_document_is_published_as_it_now_is(make_store: StoreFactory, cluster: str) -> None:
    """publish_member keeps the last document's JSON (one encoding while it stays the same): a
    changed document is written as it now is, and going back to an earlier one writes that."""
    s = make_store(cluster)
    for lsn in (1, 1, 2, 1):
        s.publish_member(member("a", lsn=lsn), TTL * 2, T)
        assert s.snapshot(T).members["a"].lsn == lsn


def test_a_snapshot_is_parsed_again_only_when_the_read_changed(
        make_store: StoreFactory, cluster: str) -> None:
    """An unchanged read gives the last view back (the same object); any write, a member's new
    document or a deleted key gives a view of what the store now holds."""
    a, b = make_store(cluster), make_store(cluster)
    a.publish_member(member("a", lsn=1), TTL * 2, T)
    first = b.snapshot(T)
    assert b.snapshot(T) is first and first.members["a"].lsn == 1
    a.publish_member(member("a", lsn=2), TTL * 2, T)
    second = b.snapshot(T)
    assert second is not first and second.members["a"].lsn == 2
    assert a.acquire_leader("a", TTL * 2, T)
    third = b.snapshot(T)
    assert third.leader is not None and third.leader.name == "a" and second.leader is None
    assert a.release_leader("a", T)
    assert b.snapshot(T).leader is None
