"""What a new primary waits for from its first commit (rules 6, 8), decided in the core and carried
by the Promote action. Found by the fault suite (etcd, synchronous_mode on, seed 765280336): a
leader that demoted itself when the store went quiet, then promoted again under its still-valid
lease, came up waiting for no standby while the store still promised that node3 held every
acknowledged commit; it acknowledged 213 commits node3 never had, was killed, and node3 was
promoted without them."""

from __future__ import annotations

import pytest

from pgwarden.core.actions import Promote
from pgwarden.core.decide import decide
from pgwarden.core.model import NO_SYNC, Role, SyncConfig
from pgwarden.core.settings import SyncMode
from pgwarden.core.sync import NO_STANDBY, after_promotion

from .builders import leader_obs, member, obs, peer, peers, replica_pg, settings, sync_state, view

ON = settings(synchronous_mode=SyncMode.ON)


def _promote(actions: tuple[object, ...]) -> Promote:
    found = [a for a in actions if isinstance(a, Promote)]
    assert len(found) == 1, actions
    return found[0]


def test_a_leader_promoting_again_keeps_enforcing_the_stored_promise() -> None:
    """n1 leads, the store promises every commit is on n3; n1's server is a standby again (it
    demoted itself): its promotion must wait for n3 from the first commit."""
    v = view("n1", [member("n1", Role.REPLICA), member("n2"), member("n3")], cluster=ON,
             sync=sync_state("n1", "n3"))
    d = decide(leader_obs(replica_pg(None), v))
    assert _promote(d.actions).sync == SyncConfig(1, frozenset({"n3"}))


def test_a_failover_candidate_in_the_promise_waits_for_the_rest_of_it() -> None:
    """n2 was the promise's only member: as primary it holds every commit itself, so nothing to
    wait for (non-strict). In quorum ANY 2 (n2, n3) it still needs n3."""
    v = view(None, [member("n1", running=False), member("n2"), member("n3")], cluster=ON,
             sync=sync_state("n1", "n2"))
    d = decide(obs("n2", replica_pg("n1"), v, ps=peers(peer("n3", 900))))
    assert _promote(d.actions).sync == NO_SYNC


@pytest.mark.parametrize(("quorum", "members", "me", "expected"), [
    (1, ("n3",), "n1", SyncConfig(1, frozenset({"n3"}))),
    (1, ("n1",), "n1", NO_SYNC),
    (2, ("n1", "n2", "n3"), "n1", SyncConfig(1, frozenset({"n2", "n3"}))),
    (1, ("n1", "n2"), "n1", NO_SYNC),
    (2, ("n2", "n3"), "n1", SyncConfig(2, frozenset({"n2", "n3"}))),
])
def test_after_promotion_enforces_the_promise_for_new_commits(
        quorum: int, members: tuple[str, ...], me: str, expected: SyncConfig) -> None:
    stored = sync_state("n1", *members, quorum=quorum)
    assert after_promotion(ON, stored, me, ("n1", "n2", "n3")) == expected


def test_strict_mode_waits_for_some_standby_when_the_promise_asks_for_none() -> None:
    strict = settings(synchronous_mode=SyncMode.ON, synchronous_mode_strict=True)
    # Some standby by name: any of the peers that may be synchronous, never "*" (which a logical
    # subscriber's walsender satisfies); with no peer, a name no member has.
    assert after_promotion(strict, sync_state("n1", "n1"), "n1", ("n2", "n3")) == \
        SyncConfig(1, frozenset({"n2", "n3"}))
    assert after_promotion(strict, None, "n1", ("n2",)) == SyncConfig(1, frozenset({"n2"}))
    assert after_promotion(strict, None, "n1", ()) == SyncConfig(1, frozenset({NO_STANDBY}))


def test_asynchronous_mode_waits_for_nothing_once_the_promise_is_gone() -> None:
    assert after_promotion(settings(), None, "n1", ("n2",)) == NO_SYNC
    # A promise left from a synchronous period still holds until the leader weakens it in order.
    assert after_promotion(settings(), sync_state("n1", "n3"), "n1", ("n3",)) == \
        SyncConfig(1, frozenset({"n3"}))
