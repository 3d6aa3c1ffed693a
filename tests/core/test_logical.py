"""The declared logical replication and the leader's reconciliation of it (core/logical.py)."""

from __future__ import annotations

import json

import pytest

from pgwarden.config.load import parse_stored_settings
from pgwarden.core import logical as L
from pgwarden.core.actions import ApplyLogical
from pgwarden.core.decide import decide
from pgwarden.core.settings import ClusterSettings
from pgwarden.store.documents import dump_settings
from tests.core.builders import leader_obs, obs, primary_pg, replica_pg, view

ORDERS = L.PublicationSpec(name="orders", tables=("public.orders", "public.customers"),
                           where={"public.orders": "region = 'eu'"},
                           columns={"public.customers": ("id", "name")})
SUB = L.SubscriptionSpec(name="orders_eu", source="host=a,b port=5432 target_session_attrs=read-write",
                         publications=("orders",))
NONE = L.LogicalObjects({}, {})


def test_missing_declarations_are_created_subscriptions_first() -> None:
    changes, conflicts = L.reconcile((ORDERS,), (SUB,), NONE)
    assert changes == [L.CreateSubscription(SUB), L.CreatePublication(ORDERS)]
    assert conflicts == []


def test_objects_made_from_the_same_declaration_are_left_alone() -> None:
    have = L.LogicalObjects({"orders": L.digest(ORDERS)}, {"orders_eu": L.digest(SUB)})
    assert L.reconcile((ORDERS,), (SUB,), have) == ([], [])


def test_a_changed_declaration_replaces_the_object() -> None:
    wider = L.PublicationSpec(name="orders", tables=("public.orders",))
    have = L.LogicalObjects({"orders": L.digest(ORDERS)}, {})
    assert L.reconcile((wider,), (), have)[0] == [L.ReplacePublication(wider)]
    moved = L.SubscriptionSpec(name="orders_eu", source="host=c", publications=("orders",))
    have = L.LogicalObjects({}, {"orders_eu": L.digest(SUB)})
    assert L.reconcile((), (moved,), have)[0] == [L.AlterSubscription(moved)]


def test_only_managed_objects_are_dropped_and_unmanaged_names_are_reported() -> None:
    have = L.LogicalObjects({"old": L.digest(ORDERS), "theirs": None, "orders": "a comment"},
                            {"gone": L.digest(SUB), "manual": None})
    changes, conflicts = L.reconcile((ORDERS,), (), have)
    assert changes == [L.DropSubscription("gone"), L.DropPublication("old")]
    assert conflicts == ["publication orders exists and was not made by pgwarden: left alone"]


def test_the_digest_ignores_the_order_of_maps_but_not_their_content() -> None:
    a = L.PublicationSpec(name="p", tables=("s.a", "s.b"), where={"s.a": "x > 1", "s.b": "y > 1"})
    b = L.PublicationSpec(name="p", tables=("s.a", "s.b"), where={"s.b": "y > 1", "s.a": "x > 1"})
    c = L.PublicationSpec(name="p", tables=("s.a", "s.b"), where={"s.a": "x > 2", "s.b": "y > 1"})
    assert L.digest(a) == L.digest(b) != L.digest(c)
    assert L.digest(a).startswith(L.MARK)


@pytest.mark.parametrize("kw, needle", [
    (dict(name="Bad-Name", tables=("public.t",)), "lower-case"),
    (dict(name="p"), "name some tables"),
    (dict(name="p", all_tables=True, tables=("public.t",)), "all_tables takes no tables"),
    (dict(name="p", tables=("orders",)), "schema.table"),
    (dict(name="p", tables=("public.t",), where={"public.u": "x"}), "not one of its tables"),
    (dict(name="p", tables=("public.t",), where={"public.t": "x; drop table t"}), "without ';'"),
    (dict(name="p", tables=("public.t",), columns={"public.t": ()}), "empty column list"),
    (dict(name="p", tables=("public.t",), columns={"public.t": ("a b",)}), "column of public.t"),
])
def test_bad_publications_are_refused_naming_what_is_wrong(kw: dict[str, object], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        L.PublicationSpec(**kw)  # type: ignore[arg-type]


def test_bad_subscriptions_and_duplicates_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one publication"):
        L.SubscriptionSpec(name="s", source="host=a", publications=())
    with pytest.raises(ValueError, match="libpq connection string"):
        L.SubscriptionSpec(name="s", source=" ", publications=("p",))
    with pytest.raises(ValueError, match="declared twice"):
        ClusterSettings(publications=(ORDERS, ORDERS))


def test_declarations_survive_the_store_document() -> None:
    s = ClusterSettings(publications=(ORDERS,), subscriptions=(SUB,))
    back = parse_stored_settings(json.loads(dump_settings(s)), "test")
    assert back == s
    assert L.digest(back.publications[0]) == L.digest(ORDERS)


def test_the_leader_reconciles_what_it_observed() -> None:
    cluster = ClusterSettings(publications=(ORDERS,))
    d = decide(leader_obs(primary_pg(logical=NONE), view("n1", cluster=cluster)))
    assert ApplyLogical(L.CreatePublication(ORDERS)) in d.actions


def test_nothing_is_reconciled_without_an_observation_or_on_a_replica() -> None:
    cluster = ClusterSettings(publications=(ORDERS,))
    d = decide(leader_obs(primary_pg(), view("n1", cluster=cluster)))
    assert not any(isinstance(a, ApplyLogical) for a in d.actions)
    d = decide(obs("n2", replica_pg(logical=NONE), view("n1", cluster=cluster)))
    assert not any(isinstance(a, ApplyLogical) for a in d.actions)


def test_a_name_taken_by_someone_else_is_reported_by_the_leader() -> None:
    cluster = ClusterSettings(publications=(ORDERS,))
    have = L.LogicalObjects({"orders": None}, {})
    d = decide(leader_obs(primary_pg(logical=have), view("n1", cluster=cluster)))
    assert "not made by pgwarden" in d.message
    assert not any(isinstance(a, ApplyLogical) for a in d.actions)


@pytest.mark.parametrize(("source", "subscriber", "names", "gated", "open_"), [
    (15, 18, "ANY 1 (n2)", False, True),
    (16, 16, "n2", False, True),
    (18, 15, "ANY 1 (n2)", False, True),  # no failover slot for a pre-17 subscriber
    (18, 17, "ANY 1 (n2)", False, False),  # failover slot: synchronized_standby_slots
    (15, 18, "ANY 1 (n2)", True, False),  # through the gate
    (15, 18, "", False, False),  # no synchronous standby
])
def test_the_asynchronous_window(source: int, subscriber: int, names: str, gated: bool, open_: bool) -> None:
    assert (L.window_reason(source, subscriber, names, gated) is not None) == open_
