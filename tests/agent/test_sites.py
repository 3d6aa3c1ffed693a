"""Combining the other sites' GET /site answers (agent/sites.py), and a probe of nobody."""

from __future__ import annotations

from pgwarden.agent.sites import SiteProbe, combine
from pgwarden.core.model import SiteReading
from tests.support.ports import free_port


def test_answers_combine_per_cluster() -> None:
    got = combine([
        {"cluster": "B", "epoch": 1, "writable": False, "dsn": "host=b1"},
        {"cluster": "B", "epoch": 2, "writable": True, "dsn": "host=b1,b2", "timeline": 4},
        {"cluster": "C", "epoch": 0, "writable": False, "dsn": ""},
    ])
    assert got == (SiteReading("B", True, 2, True, "host=b1,b2", 4),
                   SiteReading("C", True, 0, False, "", None))
    demoted = combine([{"cluster": "A", "standby_of": "host=b1"}, {"cluster": "A", "standby_of": "host=b1"}])
    assert demoted[0].standby
    assert not combine([{"cluster": "A", "standby_of": "host=b1"}, {"cluster": "A"}])[0].standby


def test_a_site_nobody_answers_for_is_not_reported() -> None:
    probe = SiteProbe()
    try:
        assert probe.read((f"http://127.0.0.1:{free_port()}",), 0.5) == ()
        assert probe.latest(max_age=10.0) == ()  # nothing read yet counts as nothing
    finally:
        probe.close()
