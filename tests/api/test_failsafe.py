"""POST /failsafe, /failsafe/vote and /failsafe/release (SAFETY rule 17): credentials required,
bodies validated, the member's answer passed through from the agent."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .env import Env, make_env


@pytest.fixture
def env() -> Iterator[Env]:
    e = make_env()
    yield e
    e.server.stop()


def test_confirmation_and_vote_need_credentials(env: Env) -> None:
    for path, body in (("/failsafe", {"leader": "node1", "timeline": 3, "ttl": 4}),
                       ("/failsafe/vote", {"candidate": "node3", "ttl": 4}),
                       ("/failsafe/release", {"candidate": "node3", "round": "r1"})):
        r = env.request("POST", path, body, auth=None)
        assert r.status == 401 and "WWW-Authenticate" in r.headers, path
    assert env.commands.calls == []


def test_the_members_answer_is_passed_through(env: Env) -> None:
    assert env.json("POST", "/failsafe", {"leader": "node1", "timeline": 3, "ttl": 4}) == \
        (200, {"confirmed": True, "reason": "confirmed node1"})
    assert env.json("POST", "/failsafe", {"leader": "node3", "timeline": None, "ttl": 4.5}) == \
        (200, {"confirmed": False, "reason": "this member follows node1"})
    assert env.json("POST", "/failsafe/vote", {"candidate": "node3", "ttl": 4}) == \
        (200, {"granted": True, "reason": "promised node3"})
    assert env.json("POST", "/failsafe/vote", {"candidate": "node3", "ttl": 4, "round": "a1"}) == \
        (200, {"granted": True, "reason": "promised node3"})
    assert env.json("POST", "/failsafe/release", {"candidate": "node3", "round": "a1"}) == \
        (200, {"released": True, "reason": "released the vote for node3"})
    assert env.commands.calls == ["failsafe confirm node1 tl=3 ttl=4",
                                  "failsafe confirm node3 tl=None ttl=4.5",
                                  "failsafe vote node3 ttl=4 round=",
                                  "failsafe vote node3 ttl=4 round=a1", "failsafe release node3 round=a1"]


@pytest.mark.parametrize("path, body, error", [
    ("/failsafe", {"timeline": 3, "ttl": 4}, "leader is required"),
    ("/failsafe", {"leader": "", "timeline": 3, "ttl": 4}, "leader is required"),
    ("/failsafe", {"leader": "node1", "timeline": "3", "ttl": 4}, "field 'timeline'"),
    ("/failsafe", {"leader": "node1", "ttl": 0}, "ttl is required"),
    ("/failsafe", {"leader": "node1", "ttl": True}, "field 'ttl'"),
    ("/failsafe", {"leader": "node1", "ttl": 4, "term": 9}, "unknown field 'term'"),
    ("/failsafe/vote", {"candidate": "node3"}, "ttl is required"),
    ("/failsafe/vote", {"candidate": "node3", "ttl": 1e9}, "ttl is required"),
    ("/failsafe/vote", {"candidate": "node3", "ttl": 4, "round": ""}, "round is required"),
    ("/failsafe/vote", {"candidate": "node3", "ttl": 4, "round": "x" * 65}, "round is required"),
    ("/failsafe/release", {"candidate": "node3"}, "round is required"),
    ("/failsafe/release", {"candidate": "node3", "round": "r\u00e9"}, "round is required"),
    ("/failsafe/release", {"round": "r1"}, "candidate is required"),
    ("/failsafe/release", {"candidate": "node3", "round": "r1", "ttl": 4}, "unknown field 'ttl'"),
])
def test_bad_bodies_are_400s_naming_the_field(env: Env, path: str, body: dict[str, object],
                                              error: str) -> None:
    status, answer = env.json("POST", path, body)
    assert status == 400 and error in answer["error"], answer
    assert env.commands.calls == []
