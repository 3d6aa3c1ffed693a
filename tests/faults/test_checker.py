"""The fault checker on synthetic histories: each rule flags what it must and nothing else,
including the clock-ordering slack (an acknowledgement only bounds its commit to [sent, at])."""

from __future__ import annotations

import pytest

from tests.faults.checker import (
    Ack,
    Failure,
    Violation,
    concurrent_writers,
    convergence_problems,
    lost_commits,
    summary,
    windows,
)
from tests.faults.schedule import KINDS, draw, kinds_for

A, B, C = "10.77.1.11:5432", "10.77.1.12:5432", "10.77.1.13:5432"


def acks(server: str, timeline: int, times: list[float], start_id: int = 1, rtt: float = 0.01) -> list[Ack]:
    """One ack per time `t`: sent at t - rtt, acknowledged at t."""
    return [Ack(start_id + i, 1, t - rtt, t, server, timeline) for i, t in enumerate(times)]


def kinds(violations: list[Violation]) -> list[str]:
    return sorted({v.kind for v in violations})


def test_a_clean_failover_is_no_violation() -> None:
    history = acks(A, 1, [1.0, 1.5, 2.0]) + acks(B, 2, [6.0, 6.5, 7.0], start_id=100)
    assert concurrent_writers(history) == []


def test_overlapping_windows_of_two_servers_are_a_violation() -> None:
    history = acks(A, 1, [1.0, 2.0, 5.0]) + acks(B, 2, [3.0, 4.0, 6.0], start_id=100)
    found = concurrent_writers(history)
    assert "concurrent-writers" in kinds(found)
    assert any(A in v.detail and B in v.detail for v in found)


def test_a_single_ack_inside_another_servers_window_is_a_violation() -> None:
    # B has one ack only (its own window is empty), but it lies inside A's certain window.
    history = acks(A, 1, [1.0, 2.0, 3.0]) + acks(B, 2, [2.5], start_id=100)
    found = concurrent_writers(history)
    assert kinds(found) == ["concurrent-writers", "stale-timeline"]


def test_acks_that_only_overlap_by_client_latency_are_not_a_violation() -> None:
    # A's last commit was sent at 2.9 and its ack arrived late (3.5, a slow client thread);
    # B's first ack was sent at 3.0. Either commit may have come first: no proof of overlap.
    history = [Ack(1, 1, 0.9, 1.0, A, 1), Ack(2, 1, 2.9, 3.5, A, 1),
               Ack(100, 2, 3.0, 3.1, B, 2), Ack(101, 2, 4.0, 4.1, B, 2)]
    assert concurrent_writers(history) == []


def test_the_same_timeline_on_two_servers_is_a_forked_history() -> None:
    history = acks(A, 2, [1.0, 2.0]) + acks(B, 2, [5.0, 6.0], start_id=100)
    assert kinds(concurrent_writers(history)) == ["timeline-reused"]


def test_an_old_timeline_acknowledging_after_a_newer_one_is_stale() -> None:
    # B promoted (timeline 3) and acknowledged; afterwards A, on timeline 2, acknowledges again
    # although its windows never overlap B's: an old primary taking writes after a promotion.
    history = acks(B, 3, [1.0, 2.0], start_id=100) + acks(A, 2, [4.0, 5.0])
    found = concurrent_writers(history)
    assert kinds(found) == ["stale-timeline"]
    assert "timeline 2" in found[0].detail


def test_the_same_server_on_successive_timelines_is_fine() -> None:
    history = acks(A, 1, [1.0, 2.0]) + acks(B, 2, [4.0, 5.0], start_id=50) + acks(A, 3, [8.0, 9.0], 100)
    assert concurrent_writers(history) == []
    assert [(w.server, w.timeline) for w in windows(history)] == [(A, 1), (B, 2), (A, 3)]


def test_three_servers_one_rogue() -> None:
    history = (acks(A, 1, [1.0, 2.0]) + acks(B, 2, [4.0, 5.0, 9.0], start_id=50)
               + acks(C, 3, [6.0, 7.0], start_id=100))
    found = concurrent_writers(history)
    assert "concurrent-writers" in kinds(found)
    assert all(A not in v.detail for v in found if v.kind == "concurrent-writers")


def test_lost_commits() -> None:
    history = acks(A, 1, [1.0, 2.0, 3.0])
    assert lost_commits(history, [1, 2, 3, 4]) == []
    found = lost_commits(history, [1, 3])
    assert [v.kind for v in found] == ["lost-commit"]
    assert "1 acknowledged" in found[0].detail and "2@" in found[0].detail


def _st(role: str, tl: int, state: str = "running", lease: bool = False,
        streaming: bool = True) -> dict[str, object]:
    return {"role": role, "timeline": tl, "state": state, "holds_lease": lease, "message": "m",
            "replication_state": "streaming" if streaming and role == "replica" else None}


def test_convergence() -> None:
    ok = {"n1": _st("primary", 3, lease=True), "n2": _st("replica", 3), "n3": _st("replica", 3)}
    assert convergence_problems(ok) == []
    assert convergence_problems({**ok, "n3": None}) == ["n3: agent does not answer"]
    assert "n2: timeline 2" in convergence_problems({**ok, "n2": _st("replica", 2)})[0]
    assert "state 'stopped'" in convergence_problems({**ok, "n2": _st("replica", 3, "stopped")})[0]
    two = convergence_problems({**ok, "n2": _st("primary", 3)})
    assert two and "one running primary" in two[0]
    none = convergence_problems({**ok, "n1": _st("replica", 3)})
    assert none and "none" in none[0]
    assert "without holding the lease" in convergence_problems({**ok, "n1": _st("primary", 3)})[0]
    idle = convergence_problems({**ok, "n3": _st("replica", 3, streaming=False)})
    assert idle == ["n3: replica not streaming (m)"]


def test_summary_mentions_every_window() -> None:
    history = acks(A, 1, [1.0, 2.0]) + acks(B, 2, [4.0], start_id=50)
    text = summary(history, [Failure(1, None, 3.0, "connect", "x"), Failure(1, 7, 3.1, "indeterminate", "y")])
    assert "3 acknowledged commits, 2 failed attempts (1 indeterminate)" in text
    assert f"{A} timeline 1: 2 acks" in text and f"{B} timeline 2: 1 acks" in text


def test_the_schedule_is_a_function_of_the_seed() -> None:
    a, b = draw(7, 60, 4.0), draw(7, 60, 4.0)
    assert a == b and a != draw(8, 60, 4.0)
    assert sum(s.hold + s.gap for s in a) >= 60
    assert {s.kind for s in a} <= set(KINDS)
    freezes = [s for s in draw(3, 600, 4.0) if s.kind == "freeze-primary-agent"]
    assert freezes and all(s.hold > 4.0 for s in freezes)
    assert len(draw(1, 0, 4.0)) == 1


def test_the_new_kinds_draw_their_own_holds_and_replay() -> None:
    new = ("restart-primary", "kill-postmaster-freeze-agent", "kill-during-promotion")
    assert set(new) <= set(kinds_for("etcd")) and set(new) <= set(kinds_for("raft"))
    steps = draw(11, 600, 4.0, new)
    assert steps == draw(11, 600, 4.0, new) and {s.kind for s in steps} == set(new)
    kpf = [s for s in steps if s.kind == "kill-postmaster-freeze-agent"]
    assert all(12.0 <= s.hold <= 30.0 and 0.0 <= s.delay <= 1.0 for s in kpf)
    assert "delay" in kpf[0].describe()
    assert all(s.delay == 0.0 for s in steps if s.kind != "kill-postmaster-freeze-agent")
    only = draw(5, 120, 4.0, ("restart-primary",))
    assert {s.kind for s in only} == {"restart-primary"} and all(0.5 <= s.hold <= 8.0 for s in only)
    with pytest.raises(ValueError):
        draw(1, 10, 4.0, ("no-such-kind",))


def test_the_failsafe_kinds_are_drawn_only_for_failsafe_runs_and_never_on_raft() -> None:
    fs = ("store-outage", "store-outage-cut-primary")
    assert not set(fs) & set(kinds_for("etcd")) and not set(fs) & set(kinds_for("raft", failsafe=True))
    assert set(fs) <= set(kinds_for("etcd", failsafe=True))
    steps = draw(2, 900, 4.0, fs)
    assert {s.kind for s in steps} == set(fs) and all(4.0 <= s.hold <= 60.0 for s in steps)


def test_the_exact_rows_check_names_missing_extra_and_doubled_rows() -> None:
    from tests.faults.logical import row_problems

    assert row_problems([1, 2, 3], [3, 1, 2]) == []
    problems = row_problems([1, 2, 3], [1, 1, 4])
    assert [p.split(" rows")[0] for p in problems] == ["2", "1", "1"]
    assert "missing" in problems[0] and "lacks" in problems[1] and "more than once" in problems[2]
