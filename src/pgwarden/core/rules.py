"""Which safety rule (docs/SAFETY numbering, docs/architecture.md) a decision follows, named from
the decision itself so `ctl explain` can say "because ... (rule 10)". Pure: derived from the
decision's message and actions, so the policy in decide.py stays the one place choices are made.
"""

from __future__ import annotations

from pgwarden.core.actions import (
    AcquireLease,
    Bootstrap,
    Clone,
    Decision,
    Demote,
    Promote,
    Reclone,
    Rewind,
)

# (fragment of the message, rule label), first match wins: the specific reasons before the
# general ones. Labels name a rule number when one applies, else the policy branch.
_BY_MESSAGE: tuple[tuple[str, str], ...] = (
    ("store unreachable: demoting", "rule 2-3: lease running out without the store"),
    ("store unreachable; still leading", "rule 2: leading until the lease deadline"),
    ("store unreachable", "rule 1: only the store decides who leads"),
    ("could not renew the lease in time", "rule 2-3: lease deadline too close"),
    ("re-adopting", "rule 5: take the lease back at once"),
    ("without waiting for the lease", "rule 16: the old primary's node confirmed gone"),
    ("primary without a leader key", "rule 5: primary without the lease"),
    ("holds the lease", "rule 1: another member holds the lease"),
    ("newer timeline", "rule 11: forked timeline"),
    ("timeline forked", "rule 11: forked timeline"),
    ("forked on one timeline", "rule 11: forked timeline"),
    ("runs past where the leader", "rule 11: forked timeline"),
    ("pg_rewind", "rule 11: forked timeline"),
    ("synchronous promise", "rule 7: synchronous promise"),
    ("better candidate", "rule 10: a newer candidate goes first"),
    ("not a candidate", "rule 9: candidate rules"),
    ("restarting PostgreSQL in place", "rule 12: restart under a valid lease"),
    ("switchover away from us", "switchover"),
    ("was asked to take over", "switchover"),
    ("not taking over", "failover mode"),
    ("paused", "paused"),
    ("data directory has system id", "wrong cluster"),
    ("reinitialize", "operator command"),
    ("restart", "operator command"),
)


def rule_for(decision: Decision) -> str:
    """A short label for the rule that chose `decision` ("routine" for a steady loop)."""
    for fragment, label in _BY_MESSAGE:
        if fragment in decision.message:
            return label
    kinds = {type(a) for a in decision.actions}
    if Promote in kinds or AcquireLease in kinds:
        return "rule 4: promote only holding the lease"
    if Demote in kinds:
        return "rule 3: stop writes"
    if kinds & {Rewind, Reclone}:
        return "rule 11: forked timeline"
    if kinds & {Bootstrap, Clone}:
        return "bootstrap"
    return "routine"
