"""`ctl explain` formatting and `ctl replay` over recorded decisions: a record survives the JSON
round trip whole, replaying with the recorded settings changes nothing, and a changed setting
shows where the core would have decided otherwise."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from pgwarden.api.telemetry import Facts, Telemetry, decode_observation, record_json
from pgwarden.cli.explain import describe, load_records, parse_since, replay
from pgwarden.cli.output import CliError
from pgwarden.core.decide import decide
from pgwarden.core.model import Observation
from tests.core.builders import member, obs, peer, peers, replica_pg, view


def leaderless() -> Observation:
    """n2 ahead of n3 with no leader: n2 takes the lease and promotes."""
    return obs("n2", replica_pg(lsn=2000, received_lsn=2000), view(None, [member("n2"), member("n3")]),
               ps=peers(peer("n3", lsn=1000)))


def recorded(*observations: Observation) -> list[dict[str, Any]]:
    t = Telemetry("n2")
    for o in observations:
        t.loop_done(o, decide(o), 0.01, o.pg, Facts())
    records = [record_json(r, full=True) for r in t.decisions()]
    back: list[dict[str, Any]] = json.loads(json.dumps(records))  # as written to a file, read back
    return back


def test_an_observation_survives_the_json_round_trip() -> None:
    o = leaderless()
    (r,) = recorded(o)
    assert decode_observation(r["observation"]) == o
    assert r["rule"].startswith("rule 4")
    assert [a["kind"] for a in r["actions"]] == ["AcquireLease", "Promote"]


def test_replay_with_the_same_settings_finds_no_difference() -> None:
    assert replay(recorded(leaderless()), []) == []


def test_replay_shows_where_other_settings_decide_otherwise() -> None:
    (diff,) = replay(recorded(leaderless()), ["paused=true"])
    assert [a["kind"] for a in diff["recorded"]["actions"]] == ["AcquireLease", "Promote"]
    assert diff["replayed"]["actions"] == []
    assert "paused" in diff["replayed"]["message"]


def test_a_bad_setting_is_one_clear_error() -> None:
    with pytest.raises(CliError, match="ttl"):
        replay(recorded(leaderless()), ["ttl=-1"])


def test_describe_says_what_was_decided_why_and_what_was_seen() -> None:
    (r,) = recorded(leaderless())
    text = describe(r)
    assert "n2: no leader; taking the lease and promoting -> AcquireLease, Promote" in text
    assert "[rule 4" in text
    assert "leader none" in text and "peers n3" in text


def test_load_records_refuses_a_file_without_observations(tmp_path: Path) -> None:
    (r,) = recorded(leaderless())
    del r["observation"]
    f = tmp_path / "d.json"
    f.write_text(json.dumps({"decisions": [r]}))
    with pytest.raises(CliError, match="no observations"):
        load_records(str(f))
    f.write_text("{")
    with pytest.raises(CliError, match="not JSON"):
        load_records(str(f))


def test_parse_since() -> None:
    now = datetime(2030, 1, 1, 12, 0, 0).astimezone()
    assert parse_since("-5m", now) == now.timestamp() - 300
    assert parse_since("11:30", now) == now.replace(hour=11, minute=30).timestamp()
    assert parse_since("2030-01-01T11:00:00+00:00", now) == datetime.fromisoformat(
        "2030-01-01T11:00:00+00:00").timestamp()
    assert parse_since(None, now) is None
    with pytest.raises(CliError, match="--since"):
        parse_since("yesterday", now)
