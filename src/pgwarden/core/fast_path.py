"""The confirmed-crash fast path (SAFETY rule 16): take the leader key before its lease runs out,
only when the old primary provably cannot acknowledge another commit.

The argument (docs/architecture.md, "The confirmed-crash fast path"):

* In a synchronous mode a commit is acknowledged only after the store's synchronous set (`on`:
  all of it; `quorum`: k of its voters) flushed it, and the set only shrinks in the store first
  (rule 6). The take-over is one compare-and-swap on the leader key's version *and* the
  synchronous document's, which it rewrites: the old leader can no longer shrink the set with the
  token it read, so it cannot start acknowledging alone after we promoted.
* Every member that could confirm a commit for it answered, just now, that its WAL receiver is
  not attached to it; and in `on` mode the candidate is itself a member of the set, so after it
  promotes no acknowledgement can be given without it.
* Its node is gone, not merely unreachable: both its PostgreSQL port and its REST port *refused*
  a connection (the kernel of its host answered that nothing listens there), as seen by a
  majority of the remaining members. A frozen process still has its listening socket (the kernel
  completes the handshake), a partition drops packets (a timeout), a postmaster restarting after
  a backend crash keeps listening: none of them reads as "refused". An agent that comes back must
  adopt the key before it starts a primary (rule 12), a compare-and-swap our take-over beats or
  loses to, never both.

With the failsafe on (rule 17), the take-over also needs the votes of a majority of the failsafe
set, asked in the same loop, exactly as a take-over after the lease ran out does (`_try_promote`'s
`failsafe.candidate_refusal`, and `acquire_not_after` on the action).

Anything less (a timeout, an unanswered member, a receiver still attached, a pending request,
too few failsafe votes) leaves the normal path: wait for the lease. Pure, like the rest of the core.
"""

from __future__ import annotations

from pgwarden.core import sync
from pgwarden.core.model import ClusterView, CrashEvidence, Observation, PgView
from pgwarden.core.settings import FailoverMode


def wants_check(me: str, pg: PgView, view: ClusterView) -> bool:
    """Whether the runner should gather crash evidence this loop: a replica that is not streaming
    from a leader it might replace under the fast path's conditions (cheap ones only; the
    evidence itself is judged by `refusal`)."""
    leader = view.leader
    return (leader is not None and leader.name != me and leader.name in view.members
            and _mode_allows(view) is None
            and pg.running and pg.healthy and pg.in_recovery is True and not pg.streaming
            and sync.may_take_over(me, view.sync, True))


def _mode_allows(view: ClusterView) -> str | None:
    """Why the cluster's settings rule the fast path out, or None."""
    s = view.settings
    if not s.synchronous:
        return "not in a synchronous mode"
    if s.paused or s.failover_mode == FailoverMode.MANUAL:
        return "automatic failover is off"
    if s.standby_cluster is not None:
        return "a standby site"
    if view.failover is not None:
        return "a switchover or failover request is pending"
    if view.sync is None or view.sync.empty:
        return "the synchronous set is empty"
    return None


def refusal(obs: Observation, view: ClusterView) -> str | None:
    """Why the leader's node does not count as confirmed crashed this loop (None: it does)."""
    ev: CrashEvidence | None = obs.crash
    leader = view.leader
    if ev is None or leader is None:
        return "no crash evidence"
    if (why := _mode_allows(view)) is not None:
        return why
    if ev.leader != leader.name or ev.token != leader.token:
        return "the evidence is about another leader key"
    if leader.name == obs.me.name:
        return "we lead"
    if obs.pg.streaming:
        return "our WAL receiver streams"
    remaining = (set(view.members) | {obs.me.name}) - {leader.name}
    assert view.sync is not None
    # Every member that could confirm a commit for the old primary must have answered: the
    # remaining members and every synchronous voter (one whose member key lapsed included).
    must_answer = remaining | (set(view.sync.members) - {leader.name})
    missing = sorted(must_answer - set(ev.checks))
    if missing:
        return f"no answer from {', '.join(missing)}"
    attached = sorted(n for n in must_answer if ev.checks[n].attached)
    if attached:
        return f"WAL receiver still attached on {', '.join(attached)}"
    refused = sorted(n for n in remaining if ev.checks[n].refused)
    if 2 * len(refused) <= len(remaining):
        return f"refused by {len(refused)} of {len(remaining)} remaining members, a majority needed"
    return None


def describe(obs: Observation) -> str:
    """The evidence in words, for the decision's message and the timeline history."""
    ev = obs.crash
    if ev is None:
        return ""
    refused = sorted(n for n, c in ev.checks.items() if c.refused)
    return f"{ev.leader}'s node refused connections (seen by {', '.join(refused)}), no WAL receiver attached"
