"""The promise ledger behind POST /failsafe/vote and /failsafe/release (agent/failsafe.py): a vote
handed back is gone, but only the round named; a late hand-back never undoes a newer vote."""

from __future__ import annotations

from pgwarden.agent.failsafe import FailsafeLedger
from pgwarden.core import failsafe


def state(bound: float, votes: dict[str, float]) -> failsafe.MemberState:
    return failsafe.MemberState(name="n3", failsafe_on=True, store_reachable=False, store_leader=None,
                                leader="n1", leader_timeline=2, primary=False, ttl=4.0,
                                bound_until=bound, votes=votes)


def test_a_vote_for_a_loser_blocks_confirming_the_winner_until_handed_back() -> None:
    ledger = FailsafeLedger()
    assert ledger.vote(state, "n2", 4.0, "r1")[0]
    ok, why = ledger.confirm(state, "n1", 2, 4.0)
    assert not ok and "voted for another candidate" in why
    assert ledger.release("n2", "r1") == (True, "released the vote for n2")
    assert ledger.confirm(state, "n1", 2, 4.0) == (True, "confirmed n1")


def test_a_late_hand_back_takes_back_only_its_own_round() -> None:
    ledger = FailsafeLedger()
    assert ledger.vote(state, "n2", 4.0, "r1")[0]
    assert ledger.vote(state, "n2", 4.0, "r2")[0]
    assert ledger.release("n2", "r1")[0]
    assert "n2" in ledger.votes  # r2 still holds
    assert not ledger.confirm(state, "n1", 2, 4.0)[0]


def test_hand_backs_that_name_nothing_we_gave_are_refused() -> None:
    ledger = FailsafeLedger()
    assert ledger.vote(state, "n2", 4.0)[0]  # an older candidate that names no round
    assert ledger.release("n2", "") == (False, "no round named")
    assert ledger.release("n2", "r9") == (False, "no vote for n2 in that round")
    assert ledger.release("n4", "r1")[0] is False
    assert "n2" in ledger.votes


def test_votes_are_handed_back_only_when_they_cannot_have_been_used() -> None:
    assert failsafe.may_release_votes("not tried") and failsafe.may_release_votes("lost")
    assert not failsafe.may_release_votes("won") and not failsafe.may_release_votes("in doubt")
