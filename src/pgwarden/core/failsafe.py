"""The majority failsafe (SAFETY rule 17): a leader that cannot reach the store keeps writing only on
confirmations from a majority of the failsafe members, and a member that confirmed is bound — no
lease for itself, no vote for anyone — until its confirmation has run out.

Three kinds of promise, each on the giver's own monotonic clock:

* a **confirmation** (member -> leader L, the store unreachable to L, and to the member too or
  still naming L there): the member follows L and
  will not vote or take the lease until `received_at + ttl + LEASE_MARGIN`; L, which sent the
  request at `sent_at`, may write until `sent_at + ttl - LEASE_MARGIN` if a majority of every set
  in `failsafe_sets` confirmed within `CONFIRM_WINDOW` of sending, and only if it sent the requests
  while its permission (lease or earlier failsafe) still held: a lapsed permission never comes back
  without the store;
* a **vote** (member -> leaderless candidate X, while the stored failsafe set is non-empty): the
  member will not confirm any leader but X until `received_at + ttl + LEASE_MARGIN`. X takes the lease
  only with votes from a majority of that set (itself included) and only within
  `ttl - LEASE_MARGIN` of reading the store. Votes do not exclude one another: two candidates are
  told apart by the store's compare-and-swap, as ever. Votes count only in the loop that asked
  for them, so a candidate that did not take the lease in that loop hands them back
  (`may_release_votes`): the members need not wait out a loser's votes before confirming the
  winner;
* the **failsafe set** in the store: only the leader writes it, one member added per write and only
  on top of the value it last read (compare-and-swap), so the set a candidate reads and the sets
  the leader counts always have intersecting majorities. It only grows while `failsafe` is on and
  is cleared when it is turned off. The argument is in docs/architecture.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from pgwarden.core.model import ClusterView, Observation
from pgwarden.core.settings import LEASE_MARGIN

# A confirmation counts only if its answer reached the leader within this of sending the request.
# Must stay below 2 * LEASE_MARGIN (see docs/architecture.md, rule 17).
CONFIRM_WINDOW = LEASE_MARGIN


def majority(members: frozenset[str]) -> int:
    return len(members) // 2 + 1


def has_majority(given: Iterable[str], sets: tuple[frozenset[str], ...]) -> bool:
    """A majority of every set (and at least one non-empty set) among `given`."""
    got = frozenset(given)
    return bool(sets) and all(s and len(got & s) >= majority(s) for s in sets)


def binding_until(received_at: float, ttl: float, requested_ttl: float) -> float:
    """Until when a confirmation or vote binds its giver (its own clock): the longer of the two
    ttls, so a leader on newer settings is never promised less than it counts on."""
    return received_at + max(ttl, requested_ttl) + LEASE_MARGIN


# -- the leader ------------------------------------------------------------------------------


def extended_deadline(obs: Observation) -> float | None:
    """The lease deadline this loop's confirmation round allows, or None when it allows nothing:
    failsafe off, no round, requests sent after the permission already lapsed, or no majority."""
    r = obs.failsafe_round
    if not obs.settings.failsafe_on or r is None or not obs.lease.held:
        return None
    if r.sent_at >= obs.lease.deadline:
        return None  # continuity: a lapsed permission never comes back without the store
    if not has_majority(r.confirmed | {obs.me.name}, obs.failsafe_sets):
        return None
    return r.sent_at + obs.settings.ttl - LEASE_MARGIN


def next_members(view: ClusterView, me: str) -> frozenset[str] | None:
    """The failsafe set the leader writes next (None: leave it). Off: clear it. On: from empty, every
    member at once (nobody may use an empty set); after that, one missing member per write."""
    current = view.failsafe_members
    if not view.settings.failsafe_on:
        return frozenset() if current else None
    target = frozenset(view.members) | {me}
    if not current:
        return target
    missing = sorted(target - current)
    return current | {missing[0]} if missing else None


# -- a leaderless candidate -------------------------------------------------------------------


def candidate_refusal(obs: Observation, view: ClusterView) -> str | None:
    """Why this node may not take the lease now under rule 17, or None."""
    if obs.now < obs.failsafe_bound_until:
        return (f"bound by a failsafe confirmation for another {obs.failsafe_bound_until - obs.now:.1f}s "
                f"(rule 17)")
    members = view.failsafe_members
    if not members:
        return None
    votes = (obs.failsafe_votes or frozenset()) | {obs.me.name}
    got = len(votes & members)
    if got < majority(members):
        return (f"failsafe: {got} of {len(members)} members promised not to confirm another leader, "
                f"{majority(members)} needed")
    return None


def acquire_not_after(obs: Observation, view: ClusterView) -> float | None:
    """The latest monotonic time a candidate's lease may be confirmed taken: within ttl of the read
    that showed the failsafe set, and of the votes (each asked after that read)."""
    if not view.failsafe_members:
        return None
    read_at = obs.snapshot_at if obs.snapshot_at is not None else obs.now
    return read_at + view.settings.ttl - LEASE_MARGIN


# What became of a candidate's lease acquisition in the loop that asked for its votes.
AcquireOutcome = Literal["not tried", "won", "lost", "in doubt"]


def may_release_votes(outcome: AcquireOutcome) -> bool:
    """Whether a candidate may hand back the votes this loop gave it. Votes count only in the loop
    that asked for them (`Observation.failsafe_votes`), so once that loop cannot have taken the
    lease on them they protect nothing: it did not try, or the store answered that the key was
    taken (a definite no). Not after a create whose answer timed out (it may still land) or a
    win; a lease taken too late was already given back in the store, but handing the votes back
    gains nothing then and a failed delete would leave the key ours for a moment."""
    return outcome in ("not tried", "lost")


# -- a member asked ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MemberState:
    """What a member knows when a confirmation or vote request arrives."""

    name: str
    failsafe_on: bool
    store_reachable: bool
    store_leader: str | None  # the leader a store read just taken names (unreachable: None)
    leader: str | None  # in its last snapshot
    leader_timeline: int | None  # the leader's published timeline in that snapshot
    primary: bool  # its PostgreSQL runs as a primary, or it holds the lease
    ttl: float
    bound_until: float  # its confirmation in force (0: none)
    votes: Mapping[str, float] = field(default_factory=dict)  # candidate -> until when its vote holds


def confirm(st: MemberState, leader: str, timeline: int | None, requested_ttl: float,
            now: float) -> tuple[float | None, str]:
    """(bound until, reason): None when the member refuses to confirm `leader`."""
    if not st.failsafe_on:
        return None, "failsafe is off here"
    if st.store_reachable and st.store_leader != leader:
        # The store answers and no longer names it: nothing left to bridge. (When it does name
        # it, the store came back to us first: confirming keeps a healthy leader from demoting.)
        return None, f"the store answers here and names {st.store_leader or 'no leader'}"
    if st.leader != leader:
        return None, f"this member follows {st.leader or 'no leader'}"
    if timeline is None or st.leader_timeline != timeline:
        return None, f"{leader} was on timeline {st.leader_timeline} here, not {timeline}"
    if st.primary:
        return None, "this member runs as a primary"
    # A vote for the leader itself (it was the candidate we helped) does not stand in the way.
    other = max((until for who, until in st.votes.items() if who != leader), default=0.0)
    if now < other:
        return None, f"this member voted for another candidate ({other - now:.1f}s left)"
    return binding_until(now, st.ttl, requested_ttl), f"confirmed {leader}"


def vote(st: MemberState, candidate: str, requested_ttl: float, now: float) -> tuple[float | None, str]:
    """(votes bound until, reason): None when the member refuses to vote for `candidate`."""
    if now < st.bound_until:
        return None, f"bound by a failsafe confirmation ({st.bound_until - now:.1f}s left)"
    if st.primary and candidate != st.name:
        return None, "this member runs as a primary"
    return binding_until(now, st.ttl, requested_ttl), f"promised {candidate}"
