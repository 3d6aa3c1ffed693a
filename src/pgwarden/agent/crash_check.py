"""Evidence for the confirmed-crash fast path (SAFETY rule 16, core/fast_path.py): is the leader's
node gone, and is any WAL receiver still attached to it?

A member answers for itself, when asked (GET /leader-check?leader=NAME, or its own loop): it tries
a TCP connection to the leader's PostgreSQL port and then its REST port, and calls the node
*refused* only if every address of both refused the connection (ECONNREFUSED: the leader's kernel
said nothing listens there). A timeout, an unreachable network, a handshake that completes (a
frozen process still has its listening socket) are all "not refused". Then it reads its own
PostgreSQL's WAL receiver, fresh: attached unless there is no receiver, or it is positively
streaming from another member; unknown (PostgreSQL not answering) counts as attached.

The candidate gathers its own answer and, only if that says refused, every other member's in
parallel; the core judges them. The peers are asked over the REST API like GET /position.
"""

from __future__ import annotations

import logging
import socket
import time
import urllib.parse
from collections.abc import Callable, Mapping

from pgwarden.core.fast_path import wants_check
from pgwarden.core.model import ClusterView, CrashEvidence, LeaderCheck, MemberInfo, PgView
from pgwarden.postgres.controller import PostgresController
from pgwarden.postgres.sql import Health

log = logging.getLogger("pgwarden.agent")

# Asks members GET /leader-check in parallel (PeerProbe.check_leader): None for no answer.
PeerAsk = Callable[[list[MemberInfo], str, float], dict[str, LeaderCheck | None]]

CONNECT_TIMEOUT = 0.5  # per address; a refusal answers in well under a millisecond
# WAL receiver states that hold (or are opening) a connection to a sender.
LIVE_RECEIVER = frozenset({"starting", "streaming", "waiting", "restarting", "stopping"})


def refused(host: str, port: int, timeout: float = CONNECT_TIMEOUT) -> bool:
    """Every address of host:port refused a TCP connection just now."""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return False  # a name we cannot resolve says nothing about the node
    if not addresses:
        return False
    for family, kind, proto, _, addr in addresses:
        with socket.socket(family, kind, proto) as s:
            s.settimeout(timeout)
            try:
                s.connect(addr)
            except ConnectionRefusedError:
                continue
            except OSError:
                return False  # timed out, unreachable, prohibited: not a refusal
            return False  # something listens
    return True


def api_address(api_url: str) -> tuple[str, int] | None:
    u = urllib.parse.urlsplit(api_url)
    if not u.hostname:
        return None
    try:
        port = u.port
    except ValueError:
        return None
    return u.hostname, port or (443 if u.scheme == "https" else 80)


def node_refused(leader: MemberInfo, timeout: float = CONNECT_TIMEOUT) -> bool:
    """The leader's PostgreSQL port and its REST port both refused (checked in that order; the
    second is tried only if the first refused)."""
    api = api_address(leader.api_url)
    return api is not None and refused(leader.host, leader.port, timeout) and refused(*api, timeout)


def receiver_attached(health: Health | None, leader: str, members: Mapping[str, MemberInfo]) -> bool:
    """Whether this member's WAL receiver may be attached to `leader` (unknown: yes)."""
    if health is None:
        return True
    if not health.in_recovery or health.receiver_status is None or \
            health.receiver_status not in LIVE_RECEIVER:
        return False
    return not any(n != leader and m.host == health.sender_host and m.port == health.sender_port
                   for n, m in members.items())


class CrashCheck:
    """This member's side of rule 16's evidence: answering for itself, and gathering everyone's."""

    def __init__(self, name: str, pg: PostgresController) -> None:
        self.name = name
        self.pg = pg

    def answer(self, view: ClusterView | None, leader: str, timeout: float) -> LeaderCheck:
        """Our check of `leader` now, as our last snapshot knows it (another name: not refused)."""
        m = view.members.get(leader) if view is not None and view.leader is not None \
            and view.leader.name == leader else None
        if m is None or leader == self.name:
            return LeaderCheck(self.name, refused=False, attached=True)
        deadline = time.monotonic() + timeout
        gone = node_refused(m, min(CONNECT_TIMEOUT, timeout))
        health: Health | None = None
        try:
            health = self.pg.fresh_health(max(0.1, deadline - time.monotonic()))
        except Exception as e:  # not answering: we cannot say our receiver is detached
            log.debug("leader check: PostgreSQL did not answer: %s", e)
        assert view is not None
        return LeaderCheck(self.name, refused=gone, attached=receiver_attached(health, leader, view.members))

    def gather(self, view: ClusterView, pgv: PgView, ask: PeerAsk, timeout: float) -> CrashEvidence | None:
        """The evidence for this loop, or None. The others are asked only once our own check saw
        the node refuse with our receiver detached: a cost choice (a replica that merely lost its
        stream asks nobody), the core judges what comes back."""
        if view.leader is None or not wants_check(self.name, pgv, view):
            return None
        leader = view.leader
        own = self.answer(view, leader.name, timeout)
        if not own.refused or own.attached:
            return None
        others = [m for n, m in view.members.items() if n not in (self.name, leader.name)]
        checks: dict[str, LeaderCheck] = {self.name: own}
        for name, check in ask(others, leader.name, timeout).items():
            if check is not None:
                checks[name] = check
        return CrashEvidence(leader.name, leader.token, checks)
