"""The REST API test environment: a real ApiServer on loopback over an in-memory store, with
fake local commands, and a client that sends the right credentials unless told otherwise."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import urllib3

from pgwarden.api.auth import BasicAuth, basic_header
from pgwarden.api.server import ApiServer
from pgwarden.api.state import CommandRefused, NodeState, StateHolder
from pgwarden.config.schema import ClusterSettings
from pgwarden.core.model import HistoryEntry, LeaderCheck, MemberInfo, PeerReading, Role
from pgwarden.core.parameters import SettingSpec
from tests.support.ports import free_port

from .factory import CAUGHT_UP, LAGGING, LEADER_LSN, PRIMARY
from .memstore import MemStore

USER, PASSWORD = "admin", "s3cr:t p\u00e4ss"  # a colon, a space and non-ASCII travel intact
SERVER_AUTH = BasicAuth(USER, PASSWORD)
AUTH: Mapping[str, str] = {"Authorization": basic_header(USER, PASSWORD)}


# pg_settings as PostgreSQL 18 reports it (name, vartype, unit, min_val, max_val, enumvals),
# recorded from a real server: what the agent's PostgreSQL would give the API to check values with.
PG_SETTINGS = [SettingSpec(n, t, u, lo, hi, tuple(e)) for n, t, u, lo, hi, e in
               json.loads((Path(__file__).parent / "pg_settings.json").read_text())]


def recorded_specs(timeout: float) -> list[SettingSpec]:
    return PG_SETTINGS


class FakeCommands:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.refuse: str | None = None

    def request_restart(self) -> str:
        if self.refuse:
            raise CommandRefused(self.refuse)
        self.calls.append("restart")
        return "restart requested"

    def request_reinitialize(self, force: bool) -> str:
        if self.refuse:
            raise CommandRefused(self.refuse)
        self.calls.append(f"reinitialize force={force}")
        return "reinitialize requested"

    def failsafe_confirm(self, leader: str, timeline: int | None, ttl: float) -> tuple[bool, str]:
        self.calls.append(f"failsafe confirm {leader} tl={timeline} ttl={ttl:g}")
        return leader == "node1", "confirmed node1" if leader == "node1" else "this member follows node1"

    def failsafe_vote(self, candidate: str, ttl: float, round_id: str = "") -> tuple[bool, str]:
        self.calls.append(f"failsafe vote {candidate} ttl={ttl:g} round={round_id}")
        return True, f"promised {candidate}"

    def failsafe_release(self, candidate: str, round_id: str) -> tuple[bool, str]:
        self.calls.append(f"failsafe release {candidate} round={round_id}")
        return True, f"released the vote for {candidate}"

    def check_leader(self, leader: str, timeout: float) -> LeaderCheck:
        self.calls.append(f"leader-check {leader}")
        return LeaderCheck("node2", refused=leader == "node1", attached=False)

    def read_position(self, timeout: float) -> PeerReading:
        self.calls.append("position")
        return PeerReading("node2", reachable=True, role=Role.REPLICA, running=True, timeline=3,
                           received_lsn=LEADER_LSN + 5, replayed_lsn=LEADER_LSN, lsn=LEADER_LSN + 5)


@dataclass
class Env:
    server: ApiServer
    holder: StateHolder
    store: MemStore
    commands: FakeCommands
    http: urllib3.PoolManager

    def request(self, method: str, path: str, body: Any = None, raw: bytes | None = None,
                auth: Mapping[str, str] | None = AUTH) -> urllib3.BaseHTTPResponse:
        """With the right credentials unless `auth` says otherwise (None: anonymous)."""
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        headers = {**(auth or {}), **({"Content-Type": "application/json"} if data else {})}
        return self.http.request(method, self.server.url + path, body=data, headers=headers)

    def json(self, method: str, path: str, body: Any = None, raw: bytes | None = None,
             auth: Mapping[str, str] | None = AUTH) -> tuple[int, Any]:
        r = self.request(method, path, body, raw, auth)
        return r.status, json.loads(r.data) if r.data else None

    def publish(self, me: MemberInfo, holds_lease: bool | None = None) -> NodeState:
        view = self.store.snapshot(1.0)
        lease = holds_lease if holds_lease is not None else (view.leader is not None
                                                             and view.leader.name == me.name)
        st = NodeState(member=me, cluster=view, store_ok=True, holds_lease=lease,
                       last_loop_at=time.monotonic(), started_at=time.time())
        self.holder.set(st)
        return st


def seeded_store() -> MemStore:
    store = MemStore("demo")
    for m in (PRIMARY, CAUGHT_UP, LAGGING):
        store.publish_member(m, 30, 1)
    assert store.acquire_leader("node1", 3600, 1)
    store.set_optime(LEADER_LSN, 1)
    assert store.set_settings(ClusterSettings(), None, 1)
    store.set_history((HistoryEntry(1, 0x2000000, "no recovery target specified", 1.7e9, "node1"),), 1)
    return store


def make_env(store: MemStore | None = None, commands: FakeCommands | None = None,
             with_commands: bool = True, auth: BasicAuth | None = SERVER_AUTH) -> Env:
    """A started ApiServer on loopback over `store`, requiring `auth` (None: nothing required)."""
    store = store or seeded_store()
    commands = commands or FakeCommands()
    holder = StateHolder()
    server = ApiServer("127.0.0.1", free_port(), holder, store, commands if with_commands else None, "node1",
                       store_timeout=2.0, auth=auth, setting_specs=recorded_specs)
    server.start()
    http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(total=10))
    env = Env(server, holder, store, commands, http)
    env.publish(PRIMARY)
    return env


class Errors(logging.Handler):
    """Collects the ERROR records a logger emits while a test runs."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def env_watching_errors(logger: str) -> Iterator[tuple[Env, Errors]]:
    """A server and the errors `logger` logs while it runs (for a module fixture to yield from)."""
    errors = Errors()
    logging.getLogger(logger).addHandler(errors)
    e = make_env()
    yield e, errors
    e.server.stop()
    logging.getLogger(logger).removeHandler(errors)
