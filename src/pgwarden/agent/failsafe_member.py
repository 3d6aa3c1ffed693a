"""The agent's side of the majority failsafe (SAFETY rule 17): answering other members'
confirmation and vote requests (on the API thread), and this loop's own exchanges (a leader's
confirmation round when the store is gone, a candidate's votes). The rules themselves are pure,
in `core/failsafe.py`; the promise ledger and the HTTP client in `agent/failsafe.py`."""

from __future__ import annotations

import logging
import secrets
import time
from concurrent.futures import Future
from dataclasses import replace

from pgwarden.agent.executor import LocalFacts
from pgwarden.agent.failsafe import FailsafeClient, FailsafeLedger
from pgwarden.agent.lease import LeaseKeeper
from pgwarden.config.schema import ClusterSettings, NodeConfig
from pgwarden.core import failsafe as rules
from pgwarden.core.model import ClusterView, FailsafeRound, MemberInfo, PgView
from pgwarden.store.base import StoreError
from pgwarden.store.cluster import ClusterStore

log = logging.getLogger("pgwarden.agent")


class FailsafeMember:
    """Mixed into `Agent` (runner.py), which sets these attributes."""

    cfg: NodeConfig
    lease: LeaseKeeper
    facts: LocalFacts
    failsafe: FailsafeLedger
    failsafe_client: FailsafeClient
    api_store: ClusterStore
    _view: ClusterView | None
    _last_pg: PgView | None
    _settings: ClusterSettings
    # This loop's vote round, if one was asked: (round id, the members that granted a vote).
    _vote_round: tuple[str, list[MemberInfo]] | None = None

    # -- requests from other members, on the API thread ----------------------------------------
    def _member_state(self, store_reachable: bool) -> rules.MemberState:
        view, pgv, s = self._view, self._last_pg, self._settings
        leader = view.leader.name if view is not None and view.leader is not None else None
        lm = view.members.get(leader) if view is not None and leader is not None else None
        primary = self.lease.held or (pgv is not None and pgv.running and pgv.in_recovery is False)
        return rules.MemberState(
            name=self.cfg.name, failsafe_on=s.failsafe_on, store_reachable=store_reachable,
            store_leader=None, leader=leader, leader_timeline=lm.timeline if lm is not None else None,
            primary=primary, ttl=s.ttl, bound_until=self.failsafe.bound_until)

    def failsafe_confirm(self, leader: str, timeline: int | None, ttl: float) -> tuple[bool, str]:
        """A leader asks whether we too cannot reach the store and still follow it."""
        # Our own reading now, well within the leader's answer window: a slow store (5 s of latency)
        # makes this read run its whole timeout, and the answer must still reach the leader within
        # CONFIRM_WINDOW on a loaded machine. A read that times out counts as "unreachable"; that
        # check is not what keeps two leaders apart (votes and binding are: docs/architecture.md).
        try:
            fresh = self.api_store.snapshot(rules.CONFIRM_WINDOW / 4)
            reachable, named = True, fresh.leader.name if fresh.leader is not None else None
        except StoreError:
            reachable, named = False, None
        ok, why = self.failsafe.confirm(
            lambda bound, votes: replace(self._member_state(reachable), store_leader=named, bound_until=bound,
                                         votes=votes),
            leader, timeline, ttl)
        log.log(logging.DEBUG if ok else logging.INFO, "failsafe confirmation for %s: %s", leader, why)
        return ok, why

    def failsafe_vote(self, candidate: str, ttl: float, round_id: str = "") -> tuple[bool, str]:
        """A leaderless candidate asks us to promise not to confirm any leader for a while."""
        ok, why = self.failsafe.vote(
            lambda bound, votes: replace(self._member_state(False), bound_until=bound, votes=votes),
            candidate, ttl, round_id)
        log.info("failsafe vote for %s: %s", candidate, why)
        return ok, why

    def failsafe_release(self, candidate: str, round_id: str) -> tuple[bool, str]:
        """A candidate that did not take the lease hands back the vote of its round."""
        ok, why = self.failsafe.release(candidate, round_id)
        log.log(logging.INFO if ok else logging.DEBUG, "failsafe release by %s: %s", candidate, why)
        return ok, why

    def _release_votes(self, outcome: rules.AcquireOutcome, timeout: float) -> None:
        """After this loop's actions: hand back the votes asked for in it when the core's rule
        says they can no longer be used (`core.failsafe.may_release_votes`)."""
        asked, self._vote_round = self._vote_round, None
        if asked is None or not rules.may_release_votes(outcome):
            return
        round_id, granted = asked
        self.failsafe.release(self.cfg.name, round_id)
        if granted:
            self.failsafe_client.release(granted, self.cfg.name, round_id, timeout)

    # -- this loop's exchanges -----------------------------------------------------------------
    def _failsafe_sets(self) -> tuple[frozenset[str], ...]:
        """The failsafe set we last read and any we wrote since that may have landed (rule 17)."""
        view = self._view
        if view is None:
            return ()
        # A write against a token the store has since moved past can never land: forget it.
        pending = self.facts.failsafe_pending
        pending[:] = [p for p in pending if p[0] == view.failsafe_token]
        return (view.failsafe_members, *(m for _, m in self.facts.failsafe_pending))

    def _confirmation_round(self, pgv: PgView, s: ClusterSettings) -> Future[FailsafeRound] | None:
        """As a leader with failsafe on and a valid lease: ask the failsafe members to confirm us."""
        last = self._view
        if not s.failsafe_on or last is None or not self.lease.valid(time.monotonic()) or \
                not (pgv.running and pgv.in_recovery is False):
            return None
        names = frozenset().union(*self._failsafe_sets()) - {self.cfg.name}
        others = [m for n, m in last.members.items() if n in names]
        return self.failsafe_client.submit_confirmations(others, self.cfg.name, pgv.timeline, s.ttl)

    def _failsafe_asks(
            self, view: ClusterView | None, pgv: PgView, s: ClusterSettings,
            early: Future[FailsafeRound] | None,
            taking_over: bool = False) -> tuple[FailsafeRound | None, frozenset[str] | None]:
        """Rule 17's exchanges for this loop: as a leader cut off from the store, a confirmation
        round (`early`, if one was started before the store read); as a leaderless candidate under
        a failsafe set, or one whose leader's node refused connections (`taking_over`, the
        confirmed-crash fast path, rule 16), votes."""
        if view is None:
            asked = early if early is not None else self._confirmation_round(pgv, s)
            return (asked.result() if asked is not None else None), None
        # Only a node that could promote asks: each vote keeps its giver from confirming a leader.
        could = pgv.running and pgv.healthy and pgv.in_recovery is True and not s.paused
        if could and view is not None and (view.leader is None or taking_over) and view.failsafe_members and \
                time.monotonic() >= self.failsafe.bound_until:
            round_id = secrets.token_hex(8)
            ok, _ = self.failsafe_vote(self.cfg.name, s.ttl, round_id)  # our own promise first
            if not ok:
                return None, frozenset()
            others = [m for n, m in view.members.items() if n in view.failsafe_members and n != self.cfg.name]
            votes = self.failsafe_client.votes(others, self.cfg.name, s.ttl, min(1.0, s.retry_timeout),
                                               round_id)
            self._vote_round = round_id, [m for m in others if m.name in votes]
            return None, votes | {self.cfg.name}
        return None, None
