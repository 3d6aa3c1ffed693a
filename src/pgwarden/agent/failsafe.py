"""The agent's side of the majority failsafe (SAFETY rule 17, decided in core/failsafe.py): the
promises this member gave (a ledger the REST API thread writes and the loop reads), and the
client that asks the other members for confirmations (a leader) or votes (a candidate) over the
authenticated REST API (POST /failsafe, POST /failsafe/vote)."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import urllib3

from pgwarden.core import failsafe
from pgwarden.core.model import FailsafeRound, MemberInfo
from pgwarden.tls.contexts import ContextSource
from pgwarden.tls.http import FollowingPool

log = logging.getLogger("pgwarden.failsafe")


class FailsafeLedger:
    """The promises this member has given, on its own monotonic clock. A confirmation binds it
    (no lease, no vote) until `bound_until`; a vote for X forbids confirming any leader but X until
    it runs out or X hands it back (`release`, by the round id X sent with its request). Checks and
    updates happen under one lock, so a confirmation and a vote arriving together cannot both be
    given against each other's promise."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.bound_until = 0.0
        self.bound_to: str | None = None
        self._grants: dict[tuple[str, str], float] = {}  # (candidate, round) -> until

    @property
    def votes(self) -> dict[str, float]:
        """candidate -> until when our latest-running vote for it holds."""
        out: dict[str, float] = {}
        for (candidate, _), until in self._grants.items():
            out[candidate] = max(out.get(candidate, 0.0), until)
        return out

    def confirm(self, state: Callable[[float, dict[str, float]], failsafe.MemberState], leader: str,
                timeline: int | None, ttl: float) -> tuple[bool, str]:
        with self._lock:
            now = time.monotonic()
            st = state(self.bound_until, self.votes)
            until, why = failsafe.confirm(st, leader, timeline, ttl, now)
            if until is None:
                return False, why
            if until > self.bound_until:
                self.bound_until, self.bound_to = until, leader
            return True, why

    def vote(self, state: Callable[[float, dict[str, float]], failsafe.MemberState], candidate: str,
             ttl: float, round_id: str = "") -> tuple[bool, str]:
        """`round_id`: the candidate's name for this round of requests ("" cannot be released)."""
        with self._lock:
            now = time.monotonic()
            until, why = failsafe.vote(state(self.bound_until, self.votes), candidate, ttl, now)
            if until is None:
                return False, why
            self._grants = {k: u for k, u in self._grants.items() if u > now}  # forget spent votes
            key = (candidate, round_id)
            self._grants[key] = max(self._grants.get(key, 0.0), until)
            return True, why

    def release(self, candidate: str, round_id: str) -> tuple[bool, str]:
        """The candidate hands back the votes it asked for in `round_id` (core `may_release_votes`).
        Only that round's: a release that arrives late cannot take back a newer round's vote."""
        if not round_id:
            return False, "no round named"
        with self._lock:
            if self._grants.pop((candidate, round_id), None) is None:
                return False, f"no vote for {candidate} in that round"
            return True, f"released the vote for {candidate}"


class FailsafeClient:
    """POSTs to the other members, in parallel, each bounded by the caller's timeout."""

    def __init__(self, auth_header: str | None, tls: ContextSource | None = None) -> None:
        self._headers = {"Content-Type": "application/json"}
        if auth_header is not None:
            self._headers["Authorization"] = auth_header
        self._http = FollowingPool(tls, num_pools=16, maxsize=2, retries=False)
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="failsafe")
        self._rounds = ThreadPoolExecutor(max_workers=1, thread_name_prefix="failsafe-round")

    def submit_confirmations(self, members: Iterable[MemberInfo], leader: str, timeline: int | None,
                             ttl: float) -> Future[FailsafeRound]:
        """`confirmations` on a thread of its own (its result within CONFIRM_WINDOW and a little)."""
        return self._rounds.submit(self.confirmations, list(members), leader, timeline, ttl)

    def confirmations(self, members: Iterable[MemberInfo], leader: str, timeline: int | None,
                      ttl: float) -> FailsafeRound:
        """Ask every member to confirm us; only answers back within CONFIRM_WINDOW of sending count."""
        body = {"leader": leader, "timeline": timeline, "ttl": ttl}
        sent_at = time.monotonic()  # before any request leaves: the deadline counts from here
        window = failsafe.CONFIRM_WINDOW
        got = self._ask(members, "/failsafe", body, "confirmed", window)
        return FailsafeRound(sent_at, frozenset(n for n, at in got.items() if at - sent_at <= window))

    def votes(self, members: Iterable[MemberInfo], candidate: str, ttl: float,
              timeout: float, round_id: str) -> frozenset[str]:
        body = {"candidate": candidate, "ttl": ttl, "round": round_id}
        return frozenset(self._ask(members, "/failsafe/vote", body, "granted", timeout))

    def release(self, members: Iterable[MemberInfo], candidate: str, round_id: str,
                timeout: float) -> frozenset[str]:
        """Hand back the votes of `round_id` (best effort: one not handed back runs out)."""
        body = {"candidate": candidate, "round": round_id}
        return frozenset(self._ask(members, "/failsafe/release", body, "released", timeout))

    def _ask(self, members: Iterable[MemberInfo], path: str, body: dict[str, Any], field: str,
             timeout: float) -> dict[str, float]:
        """{member: monotonic time its yes arrived} for the members that said yes in time."""
        start = time.monotonic()
        data = json.dumps(body).encode()
        futures = {m.name: self._pool.submit(self._one, m, path, data, field, timeout)
                   for m in members if m.api_url}
        yes: dict[str, float] = {}
        for name, f in futures.items():
            try:
                ok, answered_at = f.result(timeout=max(0.0, start + timeout + 0.1 - time.monotonic()))
            except Exception:
                continue
            if ok:
                yes[name] = answered_at
        return yes

    def _one(self, m: MemberInfo, path: str, data: bytes, field: str, timeout: float) -> tuple[bool, float]:
        try:
            r = self._http.get().request("POST", m.api_url.rstrip("/") + path, body=data,
                                         headers=self._headers, timeout=urllib3.Timeout(total=timeout),
                                         preload_content=True)
            answered_at = time.monotonic()
            if r.status != 200:
                log.debug("failsafe %s to %s: HTTP %d", path, m.name, r.status)
                return False, answered_at
            d = json.loads(r.data)
        except Exception as e:
            log.debug("failsafe %s to %s failed: %s", path, m.name, e)
            return False, time.monotonic()
        if d.get(field) is not True:
            log.info("%s refused %s: %s", m.name, path, d.get("reason"))
        return d.get(field) is True, answered_at

    def close(self) -> None:
        self._rounds.shutdown(wait=False, cancel_futures=True)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._http.clear()
