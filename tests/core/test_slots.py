"""Slot retention (core/slots.py): a member's slot outlives its key for SLOT_RETENTION, so a member
being cloned or restarted finds its WAL when it comes back; then the slot goes."""

from __future__ import annotations

from dataclasses import replace

from pgwarden.core.actions import EnsureSlots
from pgwarden.core.decide import decide
from pgwarden.core.slots import SLOT_RETENTION, ensure_slots

from .builders import NOW, leader_obs, member, view


def test_a_member_whose_key_vanished_keeps_its_slot_for_a_while() -> None:
    o = replace(leader_obs(store=view("n1", [member("n1"), member("n2")])),
                slots_wanted_at={"n2": NOW - 5, "n3": NOW - 60})
    slots = next(a for a in decide(o).actions if isinstance(a, EnsureSlots))
    assert slots == EnsureSlots(frozenset({"n2"}), frozenset({"n3"}))


def test_the_slot_goes_once_retention_ran_out() -> None:
    o = replace(leader_obs(), slots_wanted_at={"gone": NOW - SLOT_RETENTION - 1})
    assert ensure_slots(o, {"n2"}) == EnsureSlots(frozenset({"n2"}), frozenset())


def test_wanted_now_is_never_also_retained() -> None:
    o = replace(leader_obs(), slots_wanted_at={"n2": NOW - 1})
    assert ensure_slots(o, {"n2"}) == EnsureSlots(frozenset({"n2"}), frozenset())
