"""`pgwarden node promote`'s rules (core/manual.py): each refusal that keeps a hand promotion from
making a second writable primary or forking a newer timeline, and the one case it allows."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from pgwarden.config.schema import ClusterSettings, FailoverMode
from pgwarden.core.manual import Writable, before_start, fork_refusal
from pgwarden.core.model import ClusterView, DataState, Role
from tests.core.builders import history, member, view

ALONE = [member("n2")]  # only the node being promoted has a member key
MANUAL = ClusterSettings(failover_mode=FailoverMode.MANUAL)


def _check(v: ClusterView, writable: Iterable[Writable] = (),
           data: DataState = DataState.VALID) -> str | None:
    return before_start(v, "n2", writable, data, "/data/n2")


def test_allowed_when_nobody_leads_nothing_writes_and_data_is_valid() -> None:
    assert _check(view(None, ALONE)) is None


def test_refused_while_another_member_holds_the_lease() -> None:
    msg = _check(view("n1"))
    assert msg is not None and "n1 holds the leader lease" in msg


def test_own_lease_does_not_refuse() -> None:
    assert _check(view("n2", ALONE)) is None


def test_refused_when_running_agents_would_elect_their_own_leader() -> None:
    msg = _check(view(None, [member("n1"), member("n2")]))
    assert msg is not None and "agents of n1 are running" in msg


def test_other_agents_allowed_when_paused_or_manual() -> None:
    ms = [member("n1"), member("n2")]
    assert _check(view(None, ms, cluster=ClusterSettings(paused=True))) is None
    assert _check(view(None, ms, cluster=MANUAL)) is None


def test_refused_when_a_server_still_takes_writes() -> None:
    msg = _check(view(None, ALONE), [Writable("n1", "10.0.0.1", 5432)])
    assert msg is not None and "n1 (10.0.0.1:5432) is still a writable primary" in msg
    msg = _check(view(None, ALONE), [Writable("n1", "10.0.0.1", 5432, upstream=True)])
    assert msg is not None and "which n2 streams from" in msg


def test_writable_servers_are_looked_at_lazily() -> None:
    seen: list[str] = []

    def servers() -> Iterator[Writable]:
        for name in ("n1", "n3"):
            seen.append(name)
            yield Writable(name, name, 5432)

    assert _check(view(None, ALONE), servers()) is not None
    assert seen == ["n1"]


def test_refused_without_valid_data() -> None:
    msg = _check(view(None, ALONE), data=DataState.EMPTY)
    assert msg is not None and "no valid data directory" in msg and "/data/n2" in msg


def test_fork_refused_behind_the_newest_timeline() -> None:
    v = view(None, [member("n2", Role.REPLICA)], hist=history((1, 100), (2, 200)))
    msg = fork_refusal(v, "n2", 2)
    assert msg is not None and "cluster reached timeline 3" in msg
    assert fork_refusal(v, "n2", None) is not None  # an unknown timeline is not assumed current


def test_fork_allowed_on_the_newest_timeline_or_without_history() -> None:
    v = view(None, [member("n2")], hist=history((1, 100), (2, 200)))
    assert fork_refusal(v, "n2", 3) is None
    assert fork_refusal(view(None, [member("n2")]), "n2", 1) is None
