"""The upgrade's steps: what a run does next from the step a killed or finished run recorded."""

from __future__ import annotations

from pathlib import Path

import pytest

from pgwarden.upgrade.state import Refused, Step, UpgradeState, advance, load, plan, save

FULL = ("check", "new_cluster", "schema", "replicate", "catch_up", "cutover")


def at(step: Step) -> UpgradeState:
    return UpgradeState(step, "old", "pg18", "/d/pg18", "/bin18", 3)


def test_a_fresh_upgrade_runs_every_step() -> None:
    assert plan(None, "upgrade") == FULL
    assert plan(at(Step.ROLLED_BACK), "upgrade") == FULL  # after a rollback: from the start


@pytest.mark.parametrize(("step", "rest"), [
    (Step.STARTED, FULL[1:]),
    (Step.NEW_CLUSTER, FULL[2:]),
    (Step.SCHEMA, FULL[3:]),
    (Step.REPLICATING, FULL[4:]),
    (Step.CAUGHT_UP, ("cutover",)),
])
def test_a_rerun_carries_on_after_the_last_recorded_step(step: Step, rest: tuple[str, ...]) -> None:
    assert plan(at(step), "upgrade") == rest


def test_a_rerun_after_a_killed_cutover_first_resumes_pgbouncer() -> None:
    assert plan(at(Step.CUTTING_OVER), "upgrade") == ("recover", "cutover")


@pytest.mark.parametrize(("step", "says"), [
    (Step.SWITCHED, "--finish"), (Step.FINISHED, "finished"), (Step.BROKEN, "--rollback"),
    (Step.CUTTING_BACK, "--rollback"),
])
def test_upgrade_refuses_where_it_has_nothing_to_do(step: Step, says: str) -> None:
    with pytest.raises(Refused, match=says):
        plan(at(step), "upgrade")


@pytest.mark.parametrize(("step", "actions"), [
    (Step.SWITCHED, ("cutback", "remove_new")),
    (Step.CUTTING_BACK, ("recover", "cutback", "remove_new")),
    (Step.REPLICATING, ("remove_new",)),  # never cut over: clients never left the old cluster
    (Step.STARTED, ("remove_new",)),
    (Step.CUTTING_OVER, ("recover", "remove_new")),
    (Step.BROKEN, ("recover", "remove_new")),
])
def test_rollback_cuts_back_only_after_a_cutover(step: Step, actions: tuple[str, ...]) -> None:
    assert plan(at(step), "rollback") == actions


def test_rollback_and_finish_refuse_when_they_do_not_apply() -> None:
    for state in (None, at(Step.ROLLED_BACK), at(Step.FINISHED)):
        with pytest.raises(Refused):
            plan(state, "rollback")
    assert plan(at(Step.SWITCHED), "finish") == ("finish",)
    for step in (Step.CAUGHT_UP, Step.CUTTING_OVER, Step.ROLLED_BACK, Step.FINISHED):
        with pytest.raises(Refused):
            plan(at(step), "finish")
    with pytest.raises(Refused, match="step reached: none"):
        plan(None, "finish")


def test_the_state_file_round_trips(tmp_path: Path) -> None:
    assert load(tmp_path) is None
    s = advance(at(Step.STARTED), Step.SCHEMA)
    save(tmp_path, s)
    assert load(tmp_path) == s
    (tmp_path / "upgrade.json").write_text('{"step": "nonsense"}')
    with pytest.raises(ValueError, match="not an upgrade state file"):
        load(tmp_path)
