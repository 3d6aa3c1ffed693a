"""core/gate.confirmed_lsn: the position the gate lets a subscriber see is one the source would
acknowledge a synchronous commit at: on `quorum` streaming members of the set, never past the
primary's own flush, nothing on a standby."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pgwarden.core.gate import confirmed_lsn
from pgwarden.core.model import NO_SYNC, ReplicationStat, SyncConfig


def stat(name: str, flush: int | None, state: str = "streaming") -> ReplicationStat:
    return ReplicationStat(name, state, "quorum", flush)


def test_without_synchronous_standbys_the_local_flush() -> None:
    assert confirmed_lsn(NO_SYNC, [stat("a", 10)], 100, in_recovery=False) == 100


def test_a_standby_confirms_nothing() -> None:
    assert confirmed_lsn(NO_SYNC, [], 100, in_recovery=True) is None
    assert confirmed_lsn(SyncConfig(1, frozenset({"a"})), [stat("a", 50)], None, in_recovery=False) is None


def test_the_quorum_th_highest_flush_of_the_listed_streaming_members() -> None:
    sync = SyncConfig(2, frozenset({"a", "b", "c"}))
    rows = [stat("a", 90), stat("b", 70), stat("c", 80), stat("x", 99)]  # x is not in the set
    assert confirmed_lsn(sync, rows, 100, in_recovery=False) == 80
    assert confirmed_lsn(SyncConfig(1, frozenset({"a", "b"})), rows, 100, in_recovery=False) == 90


def test_too_few_streaming_members_confirm_nothing() -> None:
    sync = SyncConfig(2, frozenset({"a", "b"}))
    assert confirmed_lsn(sync, [stat("a", 90), stat("b", 95, "catchup")], 100, in_recovery=False) is None
    assert confirmed_lsn(sync, [stat("a", 90), stat("b", None)], 100, in_recovery=False) is None
    assert confirmed_lsn(SyncConfig(1, frozenset({"ghost"})), [stat("a", 90)], 100, in_recovery=False) is None


def test_the_wildcard_counts_every_streaming_standby_and_never_past_the_local_flush() -> None:
    sync = SyncConfig(1, frozenset({"*"}))
    assert confirmed_lsn(sync, [stat("a", 90), stat("b", 120)], 100, in_recovery=False) == 100


rows_st = st.lists(st.tuples(st.sampled_from("abcde"), st.one_of(st.none(), st.integers(0, 1000)),
                             st.sampled_from(["streaming", "catchup", "startup"])), max_size=6)


@given(quorum=st.integers(0, 3), members=st.frozensets(st.sampled_from("abc*"), max_size=3), rows=rows_st,
       local=st.integers(0, 1000))
def test_whatever_it_confirms_is_flushed_by_quorum_listed_streaming_members(
        quorum: int, members: frozenset[str], rows: list[tuple[str, int | None, str]], local: int) -> None:
    sync = SyncConfig(quorum, members)
    got = confirmed_lsn(sync, [stat(n, f, s) for n, f, s in rows], local, in_recovery=False)
    if got is None:
        return
    assert got <= local
    if sync.empty:
        assert got == local
        return
    holders = [f for n, f, s in rows if s == "streaming" and f is not None and f >= got
               and ("*" in members or n in members)]
    assert len(holders) >= quorum
