"""The ledger of logical slot copies an agent made (agent/slot_ledger.py)."""

from __future__ import annotations

from pathlib import Path

from pgwarden.agent.slot_ledger import SlotLedger


def test_copies_survive_a_restart_with_their_system_id(tmp_path: Path) -> None:
    SlotLedger(tmp_path / "run" / "slot_copies.json").save("7300", {"s1": 2})
    assert SlotLedger(tmp_path / "run" / "slot_copies.json").load() == ("7300", {"s1": 2})


def test_a_missing_or_unreadable_ledger_trusts_nothing(tmp_path: Path) -> None:
    assert SlotLedger(tmp_path / "none.json").load() == (None, {})
    (tmp_path / "bad.json").write_text("{not json")
    assert SlotLedger(tmp_path / "bad.json").load() == (None, {})
    (tmp_path / "odd.json").write_text('{"copies": {"s1": "x"}}')
    assert SlotLedger(tmp_path / "odd.json").load() == (None, {})
