"""Table tests of the synchronous promise algebra (SAFETY rules 6-8)."""

from __future__ import annotations

import pytest

from pgwarden.config.schema import ClusterSettings, SyncMode
from pgwarden.core.model import NO_SYNC, SyncConfig, SyncState
from pgwarden.core.sync import (
    NO_PROMISE,
    NO_STANDBY,
    WILDCARD,
    Desired,
    Promise,
    Step,
    confirmed,
    desired_sync,
    enforces,
    implies,
    may_promote,
    may_promote_stored,
    may_take_over,
    next_step,
    strict_wait,
    sync_peers,
)

from .builders import member, stat, view


def P(k: int, *names: str) -> Promise:
    return Promise(k, frozenset(names))


def C(k: int, *names: str) -> SyncConfig:
    return SyncConfig(k, frozenset(names))


def want(p: Promise) -> Desired:
    return Desired(p, NO_SYNC if p.empty else SyncConfig(p.quorum, p.members))


ON = ClusterSettings(synchronous_mode=SyncMode.ON)
ON2 = ClusterSettings(synchronous_mode=SyncMode.ON, synchronous_node_count=2)
QUORUM = ClusterSettings(synchronous_mode=SyncMode.QUORUM)
STRICT = ClusterSettings(synchronous_mode=SyncMode.ON, synchronous_mode_strict=True)


# -- enforces / implies ----------------------------------------------------------------------


@pytest.mark.parametrize(("pg", "promise", "expected"), [
    (C(1, "a"), P(1, "a"), True),
    (C(1, "a", "b"), P(1, "a"), False),
    (C(2, "a", "b"), P(1, "a"), True),
    (C(2, "a", "b"), P(1, "a", "b"), True),
    (C(2, "a", "b", "c"), P(2, "a", "b"), False),
    (C(1, "a", "b"), P(1, "a", "b"), True),
    (C(1, WILDCARD), P(1, "a"), False),
    (NO_SYNC, P(1, "a"), False),
    (NO_SYNC, NO_PROMISE, True),
    (C(1, WILDCARD), NO_PROMISE, True),
])
def test_enforces(pg: SyncConfig, promise: Promise, expected: bool) -> None:
    assert enforces(pg, promise) is expected


@pytest.mark.parametrize(("a", "b", "expected"), [
    (P(1, "a"), P(1, "a", "b"), True),
    (P(1, "a", "b"), P(1, "a"), False),
    (P(2, "a", "b"), P(1, "a"), True),
    (P(2, "a", "b", "c"), P(1, "a", "b"), True),
    (P(2, "a", "b", "c"), P(2, "a", "b"), False),
    (NO_PROMISE, P(1, "a"), False),
    (P(1, "a"), NO_PROMISE, True),
])
def test_implies(a: Promise, b: Promise, expected: bool) -> None:
    assert implies(a, b) is expected


# -- desired_sync ----------------------------------------------------------------------------


def test_desired_on_prefers_current_then_least_lag() -> None:
    d = desired_sync(ON, {"a", "b", "c"}, P(1, "c"), {"a": 0, "b": 10, "c": 100}, "abc")
    assert d.promise == P(1, "c")
    d = desired_sync(ON2, {"a", "b", "c"}, NO_PROMISE, {"a": 50, "b": 10, "c": 100}, "abc")
    assert d.promise == P(2, "a", "b") and d.pg == C(2, "a", "b")


def test_desired_on_with_fewer_standbys_than_count() -> None:
    assert desired_sync(ON2, {"a"}, NO_PROMISE, {}, "a").promise == P(1, "a")


def test_desired_quorum_uses_all_voters() -> None:
    d = desired_sync(QUORUM, {"a", "b", "c"}, NO_PROMISE, {}, "abc")
    assert d.promise == P(1, "a", "b", "c") and d.pg == C(1, "a", "b", "c")


def test_desired_no_standby_non_strict_goes_async() -> None:
    assert desired_sync(ON, set(), P(1, "a"), {}, "ab") == Desired(NO_PROMISE, NO_SYNC)


def test_desired_no_standby_strict_waits_for_any_member_that_may_be_synchronous_by_name() -> None:
    # Not "*", which any walsender satisfies, a logical subscriber's too.
    assert desired_sync(STRICT, set(), P(1, "a"), {}, "ab") == Desired(NO_PROMISE, C(1, "a", "b"))
    # No member that could be synchronous: a name no member can have; commits wait for one.
    assert desired_sync(STRICT, set(), P(1, "a"), {}, ()) == Desired(NO_PROMISE, C(1, NO_STANDBY))


def test_desired_off() -> None:
    assert desired_sync(ClusterSettings(), {"a"}, P(1, "a"), {}, "a") == Desired(NO_PROMISE, NO_SYNC)


# -- confirmed -------------------------------------------------------------------------------


def test_confirmed_needs_k_members_past_the_applied_lsn() -> None:
    assert confirmed(P(1, "a"), [stat("a", 100)], 100)
    assert not confirmed(P(1, "a"), [stat("a", 99)], 100)
    assert not confirmed(P(1, "a"), [stat("b", 200)], 100)
    assert not confirmed(P(2, "a", "b"), [stat("a", 200), stat("b", 50)], 100)
    assert not confirmed(P(1, "a"), [stat("a", 200)], None)
    assert confirmed(NO_PROMISE, [], None)


# -- next_step -------------------------------------------------------------------------------


def test_add_standby_pg_first_then_store_after_confirmation() -> None:
    target = want(P(1, "a"))
    s1 = next_step(NO_SYNC, NO_PROMISE, target, [stat("a", 50)], None)
    assert s1 == Step(pg=C(1, "a"))
    # applied at LSN 100; a has not confirmed it yet
    s2 = next_step(C(1, "a"), NO_PROMISE, target, [stat("a", 50)], 100)
    assert s2.store is None and s2.pg is None and s2.waiting
    s3 = next_step(C(1, "a"), NO_PROMISE, target, [stat("a", 100)], 100)
    assert s3 == Step(store=P(1, "a"))
    assert next_step(C(1, "a"), P(1, "a"), target, [stat("a", 100)], 100) == Step()


def test_remove_standby_store_first_then_pg() -> None:
    """on, count 2 -> 1: the store drops b (implied), then the primary stops waiting for it."""
    target = want(P(1, "a"))
    s1 = next_step(C(2, "a", "b"), P(2, "a", "b"), target, [stat("a", 100), stat("b", 100)], 0)
    assert s1 == Step(store=P(1, "a"))
    s2 = next_step(C(2, "a", "b"), P(1, "a"), target, [stat("a", 100), stat("b", 100)], 0)
    assert s2 == Step(pg=C(1, "a"))


def replace_dead(start_pg: SyncConfig, start_store: Promise, target: Promise, alive: set[str],
                 flush: int = 1000) -> list[tuple[SyncConfig, Promise]]:
    """Run next_step to a fixed point, checking the safety invariants at each step."""
    pg, store, applied = start_pg, start_store, 0
    trace = [(pg, store)]
    for _ in range(10):
        stats = [stat(n, flush) for n in sorted(alive)]
        step = next_step(pg, store, want(target), stats, applied)
        assert step.store is None or step.pg is None
        if step.store is not None:
            assert implies(store, step.store) or confirmed(step.store, stats, applied)
            store = step.store
        elif step.pg is not None:
            assert enforces(step.pg, store), (step.pg, store)
            pg, applied = step.pg, flush
        else:
            break
        assert enforces(pg, store)
        trace.append((pg, store))
    return trace


def test_replace_dead_sync_standby_in_on_mode() -> None:
    """a died; b replaces it. The primary must never wait for a together with b (a is dead, that
    would block every commit), and the store always promises something the primary enforced."""
    trace = replace_dead(C(1, "a"), P(1, "a"), P(1, "b"), alive={"b"})
    pg, store = trace[-1]
    assert pg == C(1, "b") and store == P(1, "b")
    for cfg, _ in trace:
        assert not ({"a", "b"} <= cfg.members and cfg.quorum >= 2)


def test_replace_dead_sync_standby_weakening_is_to_the_leader_only() -> None:
    """The algorithm empties the store before the replacement confirms. That is safe only because
    an empty set recorded by a leader in a synchronous mode bars every other member (rule 7)."""
    trace = replace_dead(C(1, "a"), P(1, "a"), P(1, "b"), alive={"b"})
    for _, store in trace:
        if store.empty:
            state = SyncState("primary", frozenset(), 0)
            assert not may_promote_stored("b", state, True, 10**9, {})[0]
            assert not may_promote_stored("a", state, True, 10**9, {})[0]
            assert may_promote_stored("primary", state, True, 0, {})[0]


def test_replace_one_of_two_in_on_mode() -> None:
    trace = replace_dead(C(2, "a", "b"), P(2, "a", "b"), P(2, "b", "c"), alive={"b", "c"})
    assert trace[-1] == (C(2, "b", "c"), P(2, "b", "c"))
    for cfg, _ in trace:
        assert "a" not in cfg.members or cfg == C(2, "a", "b")


def test_quorum_add_voter() -> None:
    trace = replace_dead(C(1, "a", "b"), P(1, "a", "b"), P(1, "a", "b", "c"), alive={"a", "b", "c"})
    assert trace[-1] == (C(1, "a", "b", "c"), P(1, "a", "b", "c"))


def test_quorum_remove_voter() -> None:
    trace = replace_dead(C(1, "a", "b", "c"), P(1, "a", "b", "c"), P(1, "a", "b"), alive={"a", "b"})
    assert trace[-1] == (C(1, "a", "b"), P(1, "a", "b"))


def test_quorum_raise_and_lower_k() -> None:
    trace = replace_dead(C(1, "a", "b", "c"), P(1, "a", "b", "c"), P(2, "a", "b", "c"), alive={"a", "b", "c"})
    assert trace[-1] == (C(2, "a", "b", "c"), P(2, "a", "b", "c"))
    trace = replace_dead(C(2, "a", "b", "c"), P(2, "a", "b", "c"), P(1, "a", "b", "c"), alive={"a", "b", "c"})
    assert trace[-1] == (C(1, "a", "b", "c"), P(1, "a", "b", "c"))
    # lowering k is store-first
    assert trace[1] == (C(2, "a", "b", "c"), P(1, "a", "b", "c"))


def test_go_async_when_no_standby_non_strict() -> None:
    trace = replace_dead(C(1, "a"), P(1, "a"), NO_PROMISE, alive=set())
    assert trace[1] == (C(1, "a"), NO_PROMISE)  # store first
    assert trace[-1] == (NO_SYNC, NO_PROMISE)


def test_strict_no_standby_waits_for_any_standby() -> None:
    d = desired_sync(STRICT, set(), P(1, "a"), {}, "ab")
    assert next_step(C(1, "a"), P(1, "a"), d, [], 0) == Step(store=NO_PROMISE)
    assert next_step(C(1, "a"), NO_PROMISE, d, [], 0) == Step(pg=C(1, "a", "b"))
    assert next_step(C(1, "a", "b"), NO_PROMISE, d, [], 0) == Step()


def test_strict_wildcard_to_named_standby() -> None:
    # A server left waiting for "*" (set by an older pgwarden) moves to named standbys.
    d = desired_sync(STRICT, {"b"}, NO_PROMISE, {}, "b")
    assert next_step(C(1, WILDCARD), NO_PROMISE, d, [stat("b", 10)], 5) == Step(pg=C(1, "b"))
    d = desired_sync(STRICT, set(), NO_PROMISE, {}, "b")
    assert next_step(C(1, WILDCARD), NO_PROMISE, d, [], 5) == Step(pg=C(1, "b"))


def test_strict_fallback_names_every_member_but_me_and_the_nosync_ones() -> None:
    v = view("a", [member("a"), member("b"), member("c", tags={"nosync": True})])
    assert sync_peers(v, "a") == {"b"}
    assert sync_peers(None, "a") == frozenset()
    assert strict_wait(()) == C(1, NO_STANDBY) and strict_wait("bd") == C(1, "b", "d")


# -- may_promote -----------------------------------------------------------------------------


def test_may_promote_on_mode_only_members() -> None:
    assert may_promote("a", P(1, "a"), 100, {})[0]
    assert not may_promote("b", P(1, "a"), 200, {"a": 100})[0]
    assert not may_promote("a", P(1, "a"), None, {})[0]


def test_may_promote_on_mode_two_members_needs_no_reading() -> None:
    # (2, {a, b}): every commit is on both; N - k + 1 = 1 reading (itself)
    assert may_promote("a", P(2, "a", "b"), 100, {})[0]


@pytest.mark.parametrize(("k", "n", "reads_needed"), [(1, 3, 3), (2, 3, 2), (3, 3, 1), (1, 2, 2), (2, 5, 4)])
def test_may_promote_quorum_needs_n_minus_k_plus_one(k: int, n: int, reads_needed: int) -> None:
    names = [f"s{i}" for i in range(n)]
    promise = Promise(k, frozenset(names))
    others = {m: 100 for m in names[1:]}
    readings = dict(list(others.items())[: reads_needed - 1])
    assert may_promote("s0", promise, 100, readings)[0]
    fewer = dict(list(others.items())[: reads_needed - 2]) if reads_needed >= 2 else None
    if fewer is not None:
        assert not may_promote("s0", promise, 100, fewer)[0]


def test_may_promote_quorum_refuses_when_a_reading_is_ahead() -> None:
    assert not may_promote("a", P(1, "a", "b"), 100, {"b": 101})[0]
    assert may_promote("a", P(1, "a", "b"), 100, {"b": 100})[0]


def test_may_promote_ignores_readings_of_non_voters_and_unknowns() -> None:
    assert not may_promote("a", P(1, "a", "b"), 100, {"x": 50, "b": None})[0]


def test_may_promote_stored() -> None:
    st = SyncState("p", frozenset({"a"}), 1)
    assert may_promote_stored("a", st, True, 100, {})[0]
    assert not may_promote_stored("b", st, True, 100, {})[0]
    assert may_promote_stored("b", None, True, 100, {})[0]
    empty = SyncState("p", frozenset(), 0)
    assert not may_promote_stored("b", empty, True, 100, {})[0]
    assert may_promote_stored("b", empty, False, 100, {})[0]
    assert may_promote_stored("p", empty, True, 100, {})[0]


def test_may_take_over() -> None:
    assert may_take_over("a", SyncState("p", frozenset({"a"}), 1), True)
    assert not may_take_over("b", SyncState("p", frozenset({"a"}), 1), True)
    assert not may_take_over("b", SyncState("p", frozenset(), 0), True)
    assert may_take_over("b", SyncState("p", frozenset(), 0), False)
    assert may_take_over("b", None, True)


def test_a_new_primary_waits_for_any_standby_only_in_strict_mode() -> None:
    from pgwarden.config.schema import ClusterSettings, SyncMode
    from pgwarden.core.model import NO_SYNC, SyncConfig
    from pgwarden.core.sync import after_promotion

    strict = ClusterSettings(synchronous_mode=SyncMode.ON, synchronous_mode_strict=True)
    assert after_promotion(strict, None, "n1", ("n1", "n2")) == SyncConfig(1, frozenset({"n2"}))
    assert after_promotion(ClusterSettings(synchronous_mode=SyncMode.QUORUM), None, "n1", ("n2",)) == NO_SYNC
    mode_off = ClusterSettings(synchronous_mode_strict=True)
    assert after_promotion(mode_off, None, "n1", ("n2",)) == NO_SYNC
