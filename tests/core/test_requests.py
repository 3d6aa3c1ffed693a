"""Switchover and failover requests checked against one store snapshot: what is accepted, and the
message an operator gets for each refusal."""

from __future__ import annotations

from dataclasses import replace

import pytest

from pgwarden.config.schema import ClusterSettings, SyncMode
from pgwarden.core.model import (
    ClusterView,
    FailoverRequest,
    LeaderKey,
    MemberInfo,
    Role,
    SyncState,
    Tags,
)
from pgwarden.core.requests import (
    RequestError,
    failover_is_switchover,
    validate_failover,
    validate_restart,
    validate_switchover,
)

NOW = 1_800_000_000.0


def _m(name: str, role: Role = Role.REPLICA, *, running: bool = True, state: str = "running",
       tags: Tags | None = None) -> MemberInfo:
    return MemberInfo(name=name, api_url=f"http://{name}:8008", host=name, port=5432, role=role,
                      state=state, running=running, tags=tags or Tags())


def _view(*members: MemberInfo, leader: str | None = "a", mode: SyncMode = SyncMode.OFF,
          sync: tuple[str, ...] = (), paused: bool = False) -> ClusterView:
    if not members:
        members = (_m("a", Role.PRIMARY), _m("b"), _m("c"))
    return ClusterView(
        initialized="1", init_holder=None,
        settings=ClusterSettings(synchronous_mode=mode, paused=paused), settings_token="1",
        leader=LeaderKey(leader, "9") if leader else None,
        members={m.name: m for m in members},
        sync=SyncState(leader, frozenset(sync), 1 if sync else 0, "2") if mode != SyncMode.OFF else None,
        failover=None,
    )


# -- switchover: accepted -------------------------------------------------------------------------


def test_switchover_to_named_candidate() -> None:
    req = validate_switchover(_view(), "a", "b", None, NOW)
    assert req == FailoverRequest(kind="switchover", leader="a", candidate="b", scheduled_at=None)


def test_switchover_without_names_uses_current_leader() -> None:
    req = validate_switchover(_view(), None, None, None, NOW)
    assert (req.kind, req.leader, req.candidate) == ("switchover", "a", None)


def test_scheduled_switchover_skips_health_checks() -> None:
    # c is down now; it may be up by the time the switchover runs.
    v = _view(_m("a", Role.PRIMARY), _m("c", running=False, state="stopped"))
    req = validate_switchover(v, "a", "c", NOW + 3600, NOW)
    assert req.scheduled_at == NOW + 3600


def test_switchover_in_sync_mode_to_sync_standby() -> None:
    v = _view(mode=SyncMode.ON, sync=("c",))
    assert validate_switchover(v, "a", "c", None, NOW).candidate == "c"
    assert validate_switchover(v, "a", None, None, NOW).candidate is None


def test_switchover_in_quorum_mode_only_within_the_quorum_set() -> None:
    """As the HA core: it hands over only to a member of the store's set, so a request for
    another would wait and be dropped; refuse it up front instead."""
    v = _view(mode=SyncMode.QUORUM, sync=("c",))
    assert validate_switchover(v, "a", "c", None, NOW).candidate == "c"
    with pytest.raises(RequestError, match=r"b is not a synchronous standby \(synchronous_mode is quorum"):
        validate_switchover(v, "a", "b", None, NOW)
    with pytest.raises(RequestError, match="b is not a synchronous standby"):
        validate_failover(v, "b", NOW)


def test_paused_switchover_to_specific_candidate() -> None:
    assert validate_switchover(_view(paused=True), "a", "b", None, NOW).candidate == "b"


# -- switchover: refused --------------------------------------------------------------------------

NOFAILOVER = _view(_m("a", Role.PRIMARY), _m("b", tags=Tags(nofailover=True)), _m("c"))
STOPPED = _view(_m("a", Role.PRIMARY), _m("b", running=False, state="stopped"))
ONLY_BAD = _view(_m("a", Role.PRIMARY), _m("b", tags=Tags(nofailover=True)),
                 _m("c", running=False, state="crashed"))

REFUSALS: list[tuple[str, ClusterView, str | None, str | None, float | None, str, str]] = [
    ("no leader", _view(leader=None), None, "b", None, "precondition", "no leader in the cluster"),
    ("wrong leader", _view(), "b", "c", None, "precondition", "b is not the leader; the leader is a"),
    ("unknown candidate", _view(), "a", "x", None, "precondition", "no member named x; members: a, b, c"),
    ("candidate is leader", _view(), "a", "a", None, "invalid", "a is already the leader"),
    ("nofailover", NOFAILOVER, "a", "b", None, "precondition", "b is tagged nofailover"),
    ("not running", STOPPED, "a", "b", None, "precondition",
     "b is not a running replica (role replica, state stopped)"),
    ("not a replica", _view(_m("a", Role.PRIMARY), _m("b", Role.PRIMARY)), "a", "b", None,
     "precondition", "b is not a running replica (role primary"),
    ("no healthy replica", ONLY_BAD, "a", None, None, "precondition", "no healthy replica"),
    ("leader alone", _view(_m("a", Role.PRIMARY)), None, None, None, "precondition", "no healthy replica"),
    ("in the past", _view(), "a", "b", NOW - 60, "invalid", "cannot schedule a switchover in the past"),
    ("scheduled while paused", _view(paused=True), "a", "b", NOW + 60, "invalid",
     "cannot schedule a switchover while the cluster is paused"),
    ("paused without candidate", _view(paused=True), "a", None, None, "invalid",
     "needs a specific candidate"),
    ("not sync standby", _view(mode=SyncMode.ON, sync=("c",)), "a", "b", None, "precondition",
     "b is not a synchronous standby (synchronous_mode is on; synchronous standbys: c)"),
    ("no sync standby", _view(mode=SyncMode.ON), "a", None, None, "precondition",
     "no healthy synchronous standby"),
]


@pytest.mark.parametrize(("view", "leader", "candidate", "at", "kind", "message"),
                         [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
def test_switchover_refused(view: ClusterView, leader: str | None, candidate: str | None,
                            at: float | None, kind: str, message: str) -> None:
    with pytest.raises(RequestError) as err:
        validate_switchover(view, leader, candidate, at, NOW)
    assert message in err.value.message
    assert err.value.kind == kind
    assert str(err.value) == err.value.message


# -- failover -------------------------------------------------------------------------------------


def test_failover_without_leader() -> None:
    v = _view(_m("b"), _m("c", running=False, state="stopped"), leader=None)
    assert validate_failover(v, "c", NOW) == FailoverRequest("failover", None, "c", None)


def test_failover_with_leader() -> None:
    assert validate_failover(_view(), "b", NOW).candidate == "b"


@pytest.mark.parametrize(
    ("view", "candidate", "message"),
    [
        (_view(), "", "needs a candidate"),
        (_view(), "zz", "no member named zz; members: a, b, c"),
        (NOFAILOVER, "b", "b is tagged nofailover"),
        (_view(), "a", "a is already the leader"),
        (_view(mode=SyncMode.ON, sync=("c",), leader=None), "b", "b is not a synchronous standby"),
    ],
)
def test_failover_refused(view: ClusterView, candidate: str, message: str) -> None:
    with pytest.raises(RequestError, match=message):
        validate_failover(view, candidate, NOW)


def test_failover_in_sync_mode_with_empty_set_is_left_to_the_core() -> None:
    # Nothing to protect in the store's set; the HA core still checks at promotion time.
    v = _view(mode=SyncMode.ON, leader=None)
    assert validate_failover(v, "b", NOW).candidate == "b"


def test_request_error_is_a_value_error() -> None:
    # Callers that only know ValueError (argument parsing in the CLI) still catch it.
    assert issubclass(RequestError, ValueError)


# -- failover carried out as a switchover; restart conditions ------------------------------------


def test_failover_naming_the_leader_is_a_switchover() -> None:
    assert failover_is_switchover("a", None, scheduled=True) is True
    assert failover_is_switchover(None, "b", scheduled=False) is False


@pytest.mark.parametrize(("candidate", "scheduled", "says"), [
    (None, False, "needs a candidate"),
    ("b", True, "can't be scheduled"),
])
def test_failover_without_leader_must_be_immediate_and_named(
        candidate: str | None, scheduled: bool, says: str) -> None:
    with pytest.raises(RequestError, match=says) as e:
        failover_is_switchover(None, candidate, scheduled)
    assert e.value.kind == "invalid"


def test_restart_conditions() -> None:
    primary = _m("a", Role.PRIMARY)
    validate_restart(primary, "master", False)  # Patroni's old name for the primary
    validate_restart(primary, None, False)
    with pytest.raises(RequestError, match="this node is primary, not replica") as e:
        validate_restart(primary, "replica", False)
    assert e.value.kind == "precondition"
    with pytest.raises(RequestError, match="must be primary") as e:
        validate_restart(primary, "leader", False)
    assert e.value.kind == "invalid"
    with pytest.raises(RequestError, match="no restart is pending"):
        validate_restart(primary, None, True)
    validate_restart(replace(primary, pending_restart=True), None, True)
