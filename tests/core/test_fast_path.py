"""The confirmed-crash fast path (SAFETY rule 16, core/fast_path.py): every condition has a test
that tries to make a member take the leader key early when it must wait for the lease."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from pgwarden.core.actions import AcquireLease, Promote
from pgwarden.core.decide import decide
from pgwarden.core.fast_path import refusal, wants_check
from pgwarden.core.model import CrashEvidence, LeaderCheck, Observation
from pgwarden.core.rules import rule_for
from pgwarden.core.settings import ClusterSettings, FailoverMode, SyncMode
from tests.core.builders import member, obs, peer, peers, replica_pg, sync_state, view
from tests.core.builders import settings as cluster_settings

ON = cluster_settings(synchronous_mode=SyncMode.ON)


def _check(name: str, refused: bool = True, attached: bool = False) -> LeaderCheck:
    return LeaderCheck(name, refused=refused, attached=attached)


def _evidence(*checks: LeaderCheck, leader: str = "n1", token: str = "l1") -> CrashEvidence:
    return CrashEvidence(leader, token, {c.name: c for c in checks})


def _crashed(ev: CrashEvidence | None = None, cluster: ClusterSettings = ON, **kw: object) -> Observation:
    """n2, the synchronous standby, not streaming, both remaining members saw n1 refuse."""
    v = view("n1", sync=sync_state("n1", "n2"), cluster=cluster)
    v = replace(v, **kw)  # type: ignore[arg-type]
    o = obs("n2", replica_pg(upstream="n1", streaming=False), v, ps=peers(peer("n3")))
    return replace(o, crash=ev if ev is not None else _evidence(_check("n2"), _check("n3")))


def _takes_over(o: Observation) -> bool:
    d = decide(o)
    return any(isinstance(a, AcquireLease) and a.over is not None for a in d.actions)


def test_a_confirmed_crash_takes_the_key_over_at_its_version_and_promotes() -> None:
    d = decide(_crashed())
    take, promote = d.actions[0], d.actions[1]
    assert isinstance(take, AcquireLease) and take.over == "l1" and take.sync_token == "s1"
    assert isinstance(promote, Promote) and "fast path" in promote.why
    assert "n1's node refused connections" in d.message
    assert rule_for(d) == "rule 16: the old primary's node confirmed gone"  # what `ctl explain` says


def test_asynchronous_mode_always_waits_for_the_lease() -> None:
    o = _crashed(cluster=cluster_settings(synchronous_mode=SyncMode.OFF))
    assert refusal(o, o.store) == "not in a synchronous mode"  # type: ignore[arg-type]
    assert not _takes_over(o)


def test_a_refusal_seen_by_no_majority_waits() -> None:
    # n3 timed out (a partition drops packets): only 1 of 2 remaining members saw a refusal.
    o = _crashed(_evidence(_check("n2"), _check("n3", refused=False)))
    assert "a majority needed" in (refusal(o, o.store) or "")  # type: ignore[arg-type]
    assert not _takes_over(o)


def test_a_replica_still_streaming_from_the_old_primary_blocks_it() -> None:
    o = _crashed(_evidence(_check("n2"), _check("n3", attached=True)))
    assert refusal(o, o.store) == "WAL receiver still attached on n3"  # type: ignore[arg-type]
    assert not _takes_over(o)


def test_our_own_receiver_streaming_blocks_it() -> None:
    o = _crashed()
    o = replace(o, pg=replace(o.pg, streaming=True))
    assert not _takes_over(o)


def test_a_member_that_did_not_answer_blocks_it() -> None:
    # n3 may be streaming from the old primary, unseen: no fast path without its answer.
    o = _crashed(_evidence(_check("n2")))
    assert refusal(o, o.store) == "no answer from n3"  # type: ignore[arg-type]
    assert not _takes_over(o)


def test_a_synchronous_voter_whose_member_key_lapsed_must_answer_too() -> None:
    # n4 is in the store's synchronous set but its key expired (its agent is gone, its
    # PostgreSQL may still stream and confirm commits for n1).
    o = _crashed(sync=sync_state("n1", "n2", "n4", quorum=1))
    assert refusal(o, o.store) == "no answer from n4"  # type: ignore[arg-type]
    assert not _takes_over(o)


def test_evidence_about_an_older_leader_key_does_not_count() -> None:
    # The key was re-adopted (a restarted agent) or re-taken since the checks: another version.
    o = _crashed(_evidence(_check("n2"), _check("n3"), token="l0"))
    assert not _takes_over(o)
    o = _crashed(_evidence(_check("n2"), _check("n3"), leader="n3"))
    assert not _takes_over(o)


def test_a_member_outside_the_synchronous_set_never_takes_over() -> None:
    o = _crashed(sync=sync_state("n1", "n3"))
    assert not _takes_over(o)
    assert not wants_check(o.me.name, o.pg, o.store)  # type: ignore[arg-type]


def test_manual_failover_pause_requests_and_the_failsafe_each_keep_the_lease_path() -> None:
    for cluster in (cluster_settings(synchronous_mode=SyncMode.ON, failover_mode=FailoverMode.MANUAL),
                    cluster_settings(synchronous_mode=SyncMode.ON, paused=True)):
        assert not _takes_over(_crashed(cluster=cluster))
    # The failsafe on (rule 17) and no votes asked this loop: no take-over.
    assert not _takes_over(_crashed(failsafe_members=frozenset({"n1", "n2", "n3"})))
    from tests.core.builders import switchover
    assert not _takes_over(_crashed(failover=switchover("n1", "n3")))


def test_with_the_failsafe_on_a_take_over_needs_a_majority_of_votes_and_a_time_limit() -> None:
    """Rule 17 holds on the fast path as after a lease expiry: a majority of the failsafe set
    promised not to confirm any leader, and the key must be taken within ttl of the read."""
    o = _crashed(failsafe_members=frozenset({"n1", "n2", "n3"}))
    assert not _takes_over(replace(o, failsafe_votes=frozenset({"n2"})))  # 1 of 3
    voted = replace(o, failsafe_votes=frozenset({"n2", "n3"}), snapshot_at=o.now - 0.2)
    d = decide(voted)
    take = d.actions[0]
    assert isinstance(take, AcquireLease) and take.over == "l1"
    assert take.not_after == voted.now - 0.2 + voted.settings.ttl - 0.5
    # Bound by a confirmation it gave (to the old leader, say): never.
    assert not _takes_over(replace(voted, failsafe_bound_until=voted.now + 1.0))


def test_an_empty_synchronous_set_waits_for_the_lease() -> None:
    # Only the old leader holds every acknowledged commit then (non-strict fallback).
    assert not _takes_over(_crashed(sync=sync_state("n1")))


def test_a_better_candidate_is_waited_for_as_after_a_lease_expiry() -> None:
    # quorum mode, both standbys voters; n3 has more WAL: n2 leaves the take-over to n3.
    q = cluster_settings(synchronous_mode=SyncMode.QUORUM)
    v = view("n1", sync=sync_state("n1", "n2", "n3", quorum=1), cluster=q)
    o = obs("n2", replica_pg(upstream="n1", streaming=False), v, ps=peers(peer("n3", lsn=2000)))
    o = replace(o, crash=_evidence(_check("n2"), _check("n3")))
    assert not _takes_over(o)
    o3 = obs("n3", replica_pg(upstream="n1", streaming=False, lsn=2000, received_lsn=2000,
                              replayed_lsn=2000), v, ps=peers(peer("n2")))
    assert _takes_over(replace(o3, crash=_evidence(_check("n2"), _check("n3"))))


def test_wants_check_only_for_a_non_streaming_synchronous_standby() -> None:
    o = _crashed()
    assert wants_check(o.me.name, o.pg, o.store)  # type: ignore[arg-type]
    streaming = replace(o, pg=replace(o.pg, streaming=True))
    assert not wants_check(o.me.name, streaming.pg, o.store)  # type: ignore[arg-type]
    assert o.store is not None
    assert not wants_check(o.me.name, o.pg, replace(o.store, settings=cluster_settings()))


@settings(max_examples=400, deadline=None)
@given(
    refused=st.fixed_dictionaries({n: st.booleans() for n in ("n2", "n3", "n4")}),
    attached=st.fixed_dictionaries({n: st.booleans() for n in ("n2", "n3", "n4")}),
    answered=st.sets(st.sampled_from(["n2", "n3", "n4"])),
    streaming=st.booleans(),
    token=st.sampled_from(["l1", "l0"]),
    mode=st.sampled_from([SyncMode.OFF, SyncMode.ON, SyncMode.QUORUM]),
    in_set=st.booleans(),
)
def test_no_take_over_unless_every_condition_holds(
    refused: dict[str, bool], attached: dict[str, bool], answered: set[str], streaming: bool,
    token: str, mode: SyncMode, in_set: bool,
) -> None:
    """Over every combination: a take-over happens only when rule 16 holds in full."""
    ms = [member("n1"), member("n2"), member("n3"), member("n4")]
    voters = ("n2", "n3", "n4") if in_set else ("n3", "n4")
    cluster = cluster_settings(synchronous_mode=mode)
    v = view("n1", ms, sync=sync_state("n1", *voters, quorum=1 if mode == SyncMode.QUORUM else None),
             cluster=cluster)
    o = obs("n2", replica_pg(upstream="n1", streaming=streaming), v,
            ps=peers(*(peer(n) for n in answered if n != "n2")))
    checks = {n: LeaderCheck(n, refused[n], attached[n]) for n in answered}
    o = replace(o, crash=CrashEvidence("n1", token, checks))
    taken = _takes_over(o)
    remaining = {"n2", "n3", "n4"}
    holds = (mode != SyncMode.OFF and in_set and not streaming and token == "l1"
             and answered == remaining and not any(attached.values())
             and 2 * sum(refused.values()) > len(remaining))
    # Equal positions: n2 wins rule 10's tie-break by name, so where the rule holds it acts.
    assert taken == holds
