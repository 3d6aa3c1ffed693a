"""Standby sites and SAFETY rule 18 in the pure core (core/standby.py hooked into decide)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from pgwarden.config.load import parse_settings
from pgwarden.core.actions import (
    Bootstrap,
    Demote,
    EnsureSlots,
    Follow,
    JoinSite,
    Promote,
    RecordEpoch,
    StartPostgres,
)
from pgwarden.core.decide import decide
from pgwarden.core.model import ClusterView, Role, SiteReading, SiteState
from pgwarden.core.settings import ClusterSettings, StandbyCluster
from pgwarden.core.standby import newer_writable_site, source_upstream
from tests.core.builders import (
    empty_pg,
    kinds,
    leader_obs,
    member,
    obs,
    primary_pg,
    replica_pg,
    stopped_pg,
    view,
)

SOURCE = "host=a1,a2 port=5432,5433 target_session_attrs=read-write"
STANDBY = ClusterSettings(standby_cluster=StandbyCluster(source=SOURCE))


def standby_view(leader: str | None = "n1", epoch: int = 0) -> ClusterView:
    v = view(leader, [member("n1", Role.STANDBY_LEADER), member("n2")], cluster=STANDBY)
    return replace(v, site=SiteState(epoch=epoch, peers=("http://a1:8008",), cluster="B"))


def site(cluster: str = "A", epoch: int = 0, writable: bool = True) -> SiteReading:
    return SiteReading(cluster, True, epoch, writable, "host=a1 port=5432 target_session_attrs=read-write")


def test_standby_leader_streams_from_the_source_and_never_promotes() -> None:
    src = source_upstream(STANDBY)
    assert src is not None and src.dsn == SOURCE
    running = leader_obs(replica_pg(upstream=src.name), standby_view())
    d = decide(running)
    assert not any(isinstance(a, Promote) for a in d.actions)
    assert "standby leader" in d.message
    elsewhere = leader_obs(replica_pg(upstream="n2"), standby_view())
    assert Follow(src) in decide(elsewhere).actions
    stopped = leader_obs(stopped_pg(), standby_view())
    assert StartPostgres("replica", src) in decide(stopped).actions


def test_a_primary_leading_a_standby_site_demotes_to_stream_from_the_source() -> None:
    d = decide(leader_obs(primary_pg(), standby_view()))
    assert any(isinstance(a, Demote) and a.upstream == source_upstream(STANDBY) for a in d.actions)


def test_leaderless_standby_site_takes_the_lease_without_promoting() -> None:
    o = obs("n2", replica_pg(upstream=None), standby_view(leader=None))
    o = replace(o, leaderless_for=100.0)
    d = decide(o)
    assert kinds(d.actions) == ["AcquireLease"]


def test_other_members_cascade_from_the_standby_leader() -> None:
    d = decide(obs("n2", replica_pg(upstream=None), standby_view()))
    assert any(isinstance(a, Follow) and a.upstream.name == "n1" for a in d.actions)


def test_first_member_of_a_standby_site_clones_the_source() -> None:
    v = view(None, [], cluster=None, initialized=None)
    d = decide(obs("n1", empty_pg(), v, cluster=STANDBY))
    assert Bootstrap(source_upstream(STANDBY)) in d.actions


def test_writable_site_with_a_newer_epoch_makes_our_leader_join_it_and_stop_writes() -> None:
    v = replace(view("n1"), site=SiteState(epoch=0, peers=("http://b1:8008",), cluster="A"))
    o = replace(leader_obs(primary_pg(), v), sites=(site("B", epoch=1),))
    d = decide(o)
    assert kinds(d.actions) == ["RenewLease", "JoinSite", "Demote"]
    join = d.actions[1]
    assert isinstance(join, JoinSite) and join.epoch == 1


def test_a_demoted_leader_never_promotes_while_the_newer_site_is_seen() -> None:
    v = replace(view("n1"), site=SiteState(epoch=0, cluster="A"))
    o = replace(leader_obs(replica_pg(upstream=None), v), sites=(site("B", epoch=1),))
    assert not any(isinstance(a, Promote) for a in decide(o).actions)
    leaderless = replace(obs("n2", replica_pg(upstream=None), replace(v, leader=None)),
                         sites=(site("B", epoch=1),), leaderless_for=100.0)
    assert not any(isinstance(a, Promote) for a in decide(leaderless).actions)


@pytest.mark.parametrize(("theirs", "ours", "cluster", "wins"), [
    (1, 0, "B", True), (0, 1, "B", False), (1, 1, "B", True), (1, 1, "0", False), (2, 1, "0", True),
])
def test_only_an_outranking_writable_site_counts(theirs: int, ours: int, cluster: str, wins: bool) -> None:
    v = replace(view("n1"), site=SiteState(epoch=ours, cluster="A"))
    assert (newer_writable_site(v, (site(cluster, theirs),)) is not None) is wins
    assert newer_writable_site(v, (site(cluster, theirs, writable=False),)) is None


def test_equal_names_and_epochs_both_demote() -> None:
    v = replace(view("n1"), site=SiteState(epoch=1, cluster="A"))
    assert newer_writable_site(v, (site("A", 1),)) is not None


def test_standby_leader_records_a_higher_epoch_it_sees() -> None:
    src = source_upstream(STANDBY)
    assert src is not None
    o = replace(leader_obs(replica_pg(upstream=src.name), standby_view(epoch=1)),
                sites=(site("A", epoch=3),))
    assert RecordEpoch(3) in decide(o).actions


def test_restore_command_is_refused_in_the_settings_with_where_it_belongs() -> None:
    with pytest.raises(Exception, match=r"postgresql\.parameters"):
        parse_settings({"standby_cluster": {"source": SOURCE, "restore_command": "cp %f %p"}})
    with pytest.raises(Exception, match="password"):
        parse_settings({"standby_cluster": {"source": SOURCE + " password=x"}})


def test_the_leader_keeps_permanent_slots_for_a_standby_site() -> None:
    v = view("n1", cluster=ClusterSettings(permanent_slots=["site_b"]))
    slots = [a for a in decide(leader_obs(primary_pg(), v)).actions if isinstance(a, EnsureSlots)]
    assert slots and "site_b" in slots[0].names
