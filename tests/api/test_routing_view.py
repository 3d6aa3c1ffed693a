"""GET /status's `pgbouncer` key (what the dashboard's routing section shows): where this node's
router keeps PgBouncer pointed and which member that is, with no credentials in it."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from pgwarden.api.views import pgbouncer_json, status_json
from pgwarden.config.schema import Credentials, PgBouncerConfig
from pgwarden.routing.router import PgBouncerRouter, RouterView
from tests.api.factory import CAUGHT_UP, PRIMARY, node, view

LEADER = replace(PRIMARY, port=5433)
CLUSTER = view((LEADER, CAUGHT_UP))


def test_the_leader_shows_its_target_as_a_member() -> None:
    r = RouterView("127.0.0.1:6432", ("postgres",), ("127.0.0.1", 5433), 1_700_000_000.0, "")
    assert pgbouncer_json(replace(node(LEADER, CLUSTER), pgbouncer=r)) == {
        "address": "127.0.0.1:6432", "databases": ["postgres"], "target": "127.0.0.1:5433",
        "target_member": "node1", "confirmed_at": "2023-11-14T22:13:20+00:00", "error": None,
    }


def test_a_replica_points_nothing_and_a_node_without_pgbouncer_shows_none() -> None:
    r = RouterView("127.0.0.1:6432", ("postgres", "app"), None, None, "connection refused")
    got = pgbouncer_json(replace(node(CAUGHT_UP, CLUSTER), pgbouncer=r))
    assert got is not None and (got["target"], got["target_member"], got["confirmed_at"], got["error"]) == \
        (None, None, None, "connection refused")
    assert status_json(node(CAUGHT_UP, CLUSTER), "c")["pgbouncer"] is None


def test_the_router_reports_its_target_and_no_secret(tmp_path: Path) -> None:
    cfg = PgBouncerConfig(admin=Credentials(username="admin", password="s3cret-pw"),
                          config_file=tmp_path / "pgbouncer.ini", port=6499, databases=["postgres"])
    router = PgBouncerRouter(cfg)  # not started: nothing talks to PgBouncer
    assert router.view() == RouterView("127.0.0.1:6499", ("postgres",), None, None, "")
    router.follow(("127.0.0.1", 5433))
    v = router.view()
    assert (v.target, v.confirmed_at) == (("127.0.0.1", 5433), None)  # wanted, not yet found there
    body = status_json(replace(node(LEADER, CLUSTER), pgbouncer=v), "c")
    assert body["pgbouncer"]["target_member"] == "node1"
    assert "s3cret-pw" not in json.dumps(body)
