"""Pure pieces of the CLI: member rows (roles, lag), the topology tree, connection strings."""

from __future__ import annotations

import io

from rich.console import Console

from pgwarden.cli.output import (
    MEMBER_KEYS,
    format_tags,
    libpq_dsn,
    member_rows,
    members_table,
    stopped_row,
    topology_tree,
)
from pgwarden.config.schema import ClusterSettings, SyncMode
from pgwarden.core.model import ClusterView, LeaderKey, MemberInfo, Role, SyncState, Tags
from tests.cli.helpers import member

MB = 1024 * 1024


def view(members: list[MemberInfo], leader: str | None, leader_lsn: int | None = None) -> ClusterView:
    return ClusterView(
        initialized="1", init_holder=None, settings=ClusterSettings(), settings_token="",
        leader=LeaderKey(leader, "1") if leader else None, members={m.name: m for m in members},
        sync=None, failover=None, leader_lsn=leader_lsn,
    )


def test_rows_leader_first_with_lag_in_bytes() -> None:
    v = view([
        member("b", Role.REPLICA, 5433, 10 * MB),
        member("a", Role.PRIMARY, 5432, 12 * MB),
        member("c", Role.REPLICA, 5434, None, state="starting"),
    ], leader="a")
    rows = member_rows(v)
    assert [r["name"] for r in rows] == ["a", "b", "c"]
    assert all(tuple(r) == MEMBER_KEYS for r in rows)
    assert [r["role"] for r in rows] == ["primary", "replica", "replica"]
    assert [r["lag"] for r in rows] == [0, 2 * MB, None]


def test_leader_role_comes_from_the_lease() -> None:
    """The lease holder is the primary even before it published so; another member claiming to
    be primary stays visible as such."""
    v = view([member("a", Role.UNKNOWN, 1, 5), member("b", Role.PRIMARY, 2, 5)], leader="a")
    assert {r["name"]: r["role"] for r in member_rows(v)} == {"a": "primary", "b": "primary"}


def test_lag_uses_optime_when_leader_unpublished_and_never_negative() -> None:
    v = view([member("b", Role.REPLICA, 1, 100), member("c", Role.REPLICA, 2, 300)], leader=None,
             leader_lsn=200)
    assert {r["name"]: r["lag"] for r in member_rows(v)} == {"b": 100, "c": 0}
    assert member_rows(view([member("b", Role.REPLICA, 1, 100)], None))[0]["lag"] is None


def test_stopped_row_has_the_same_keys() -> None:
    row = stopped_row("n1", "127.0.0.1", 5432, "http://127.0.0.1:8008")
    assert tuple(row) == MEMBER_KEYS and row["state"] == "stopped"


def test_format_tags_shows_only_non_defaults() -> None:
    assert format_tags(Tags().to_dict()) == ""
    tags = Tags(nofailover=True, failover_priority=3).to_dict()
    assert format_tags(tags) == "nofailover, failover_priority=3"


def render(tree: object) -> str:
    buf = io.StringIO()
    Console(file=buf, width=200).print(tree)
    return buf.getvalue()


def test_topology_cascading() -> None:
    v = view([
        member("a", Role.PRIMARY, 1, 1),
        member("b", Role.REPLICA, 2, 1, upstream="a"),
        member("c", Role.REPLICA, 3, 1, upstream="b"),
        member("d", Role.REPLICA, 4, 1, upstream="gone"),
    ], leader="a")
    lines = render(topology_tree(v, "T")).splitlines()
    names = [ln.strip("│├└─ ").split(" ")[0] for ln in lines]
    depth = {n: len(ln) - len(ln.lstrip("│├└─ ")) for n, ln in zip(names, lines, strict=True)}
    assert names == ["T", "a", "b", "c", "d"]
    assert depth["a"] < depth["b"] < depth["c"] and depth["d"] == depth["b"]


def test_topology_upstream_loop_is_shown_once() -> None:
    v = view([member("x", Role.REPLICA, 1, 1, upstream="y"), member("y", Role.REPLICA, 2, 1, upstream="x")],
             leader=None)
    text = render(topology_tree(v, "T"))
    assert text.count("x (") == 1 and text.count("y (") == 1


def test_dsn_multi_host_quoted() -> None:
    dsn = libpq_dsn([("h1", 1), ("h2", 2)], "post gres", "p@ss/w:rd")
    assert dsn == ("postgresql://post%20gres:p%40ss%2Fw%3Ard@h1:1,h2:2/postgres"
                   "?target_session_attrs=read-write&connect_timeout=2")
    assert "target_session_attrs=prefer-standby" in libpq_dsn([("h", 1)], "u", "p", replicas=True)


def test_the_synchronous_replicas_are_marked_and_lag_has_one_format() -> None:
    def m(name: str, role: Role, lsn: int) -> MemberInfo:
        return MemberInfo(name=name, api_url="", host="h", port=1, role=role, state="running",
                          running=True, lsn=lsn)

    for mode, word in ((SyncMode.ON, "sync"), (SyncMode.QUORUM, "quorum")):
        view = ClusterView(
            initialized="1", init_holder=None, settings=ClusterSettings(synchronous_mode=mode),
            settings_token="1", leader=LeaderKey("a", "t"),
            members={"a": m("a", Role.PRIMARY, 3 << 20), "b": m("b", Role.REPLICA, 3 << 20),
                     "c": m("c", Role.REPLICA, 1 << 20)},
            sync=SyncState("a", frozenset({"b"}), 1, "s"), failover=None)
        rows = member_rows(view)
        assert [r["sync"] for r in rows] == [None, word, None]
        text = render(members_table(rows))
        assert f"replica ({word})" in text
        assert " 0.0 " in text and " 2.0 " in text  # the same number format for every lag


def test_show_config_masks_a_subscription_s_source_password() -> None:
    from pgwarden.cli.ctl import settings_yaml
    from pgwarden.core.logical import SubscriptionSpec

    s = ClusterSettings(subscriptions=(SubscriptionSpec(
        name="s1", source="host=a port=5432 user=u password=Sekrit99", publications=("p",)),))
    out = settings_yaml(s)
    assert "Sekrit99" not in out and "password=***" in out and "host=a" in out
