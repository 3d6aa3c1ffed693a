"""Fresh readings of the other members (GET /position on their REST API: their PostgreSQL's
position read when asked, not their last loop's), taken in parallel with a short deadline when a
decision needs them: no leader, or a switchover to hand over; and their own check of a leader whose
node looks gone (GET /leader-check, rule 16)."""

from __future__ import annotations

import json
import logging
import urllib.parse
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import urllib3

from pgwarden.core.model import LeaderCheck, MemberInfo, PeerReading, Role
from pgwarden.tls.contexts import ContextSource
from pgwarden.tls.http import FollowingPool

log = logging.getLogger("pgwarden.peers")
T = TypeVar("T")


class PeerProbe:
    """`tls`: the client context for https peers (our CA and certificate, restapi.tls), followed
    as the files rotate; None: plain http, or https against the system's CAs. `auth_header`: the
    API's credentials, which GET /leader-check needs (GET /position is open)."""

    def __init__(self, tls: ContextSource | None = None, auth_header: str | None = None) -> None:
        self._http = FollowingPool(tls, num_pools=16, maxsize=2, retries=False)
        self._auth = {"Authorization": auth_header} if auth_header is not None else {}
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="peer")

    def read(self, members: Iterable[MemberInfo], timeout: float) -> dict[str, PeerReading]:
        return self._each(members, lambda m: self._one(m, timeout))

    def _each(self, members: Iterable[MemberInfo], call: Callable[[MemberInfo], T]) -> dict[str, T]:
        """`call` for every member with a REST API, in parallel; each call keeps its own deadline."""
        futures = {m.name: self._pool.submit(call, m) for m in members if m.api_url}
        return {name: f.result() for name, f in futures.items()}

    def _one(self, m: MemberInfo, timeout: float) -> PeerReading:
        try:
            r = self._http.get().request("GET", m.api_url.rstrip("/") + "/position",
                                   timeout=urllib3.Timeout(total=timeout), preload_content=True)
            if r.status != 200:
                raise ValueError(f"HTTP {r.status}")
            d = json.loads(r.data)
        except Exception as e:
            log.debug("peer %s unreachable: %s", m.name, e)
            return PeerReading(m.name, reachable=False)
        role = d.get("role", "unknown")

        def opt(k: str) -> int | None:
            v = d.get(k)
            return int(v) if isinstance(v, int) else None

        return PeerReading(
            name=m.name,
            reachable=True,
            role=Role(role) if role in Role._value2member_map_ else Role.UNKNOWN,
            running=bool(d.get("running", False)),
            timeline=opt("timeline"),
            received_lsn=opt("received_lsn"),
            replayed_lsn=opt("replayed_lsn"),
            lsn=opt("lsn"),
        )

    def check_leader(self, members: list[MemberInfo], leader: str,
                     timeout: float) -> dict[str, LeaderCheck | None]:
        """Each member's GET /leader-check?leader=NAME (rule 16, agent/crash_check.py), in
        parallel; None where it did not answer in time or answered nonsense."""
        return self._each(members, lambda m: self._check(m, leader, timeout))

    def _check(self, m: MemberInfo, leader: str, timeout: float) -> LeaderCheck | None:
        url = m.api_url.rstrip("/") + "/leader-check?" + urllib.parse.urlencode({"leader": leader})
        try:
            r = self._http.get().request("GET", url, headers=self._auth,
                                         timeout=urllib3.Timeout(total=timeout), preload_content=True)
            d = json.loads(r.data) if r.status == 200 else None
        except Exception as e:
            log.debug("peer %s: no leader check: %s", m.name, e)
            return None
        if not isinstance(d, dict) or d.get("leader") != leader or \
                not isinstance(d.get("refused"), bool) or not isinstance(d.get("attached"), bool):
            return None
        return LeaderCheck(m.name, refused=d["refused"], attached=d["attached"])

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._http.clear()
