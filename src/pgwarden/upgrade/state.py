"""The upgrade's steps and what a run does next from the step recorded in its state file
(`local upgrade`: DIR/upgrade.json; `upgrade --from`: upgrade-CLUSTER.json beside the old node
file): pure, so that a killed run's rerun is decided (and tested) without servers.

Steps only move forward, each one recorded after its work is done and every step's work is
idempotent, so a rerun after a kill redoes at most the step it was killed in. The one step that
is not simply redone is the cutover, whose interruption may leave PgBouncer paused: a rerun first
resumes it on whichever side it points at (`recover`).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from pathlib import Path

STATE_FILE = "upgrade.json"


class Step(StrEnum):
    STARTED = "started"  # the checks passed
    NEW_CLUSTER = "new_cluster"  # the new cluster runs
    SCHEMA = "schema"  # roles and schema copied
    REPLICATING = "replicating"  # publication on the old, subscription on the new
    CAUGHT_UP = "caught_up"  # initial copy done, lag small
    CUTTING_OVER = "cutting_over"  # PgBouncer may be paused (a killed run left it so)
    SWITCHED = "switched"  # clients on the new cluster, changes flow back to the old one
    CUTTING_BACK = "cutting_back"  # --rollback's cutover, may be interrupted like the first
    ROLLED_BACK = "rolled_back"  # clients on the old cluster, the new one removed
    BROKEN = "broken"  # a cutover failed after dropping the forward replication: --rollback
    FINISHED = "finished"  # the old cluster retired


FORWARD: tuple[Step, ...] = (Step.STARTED, Step.NEW_CLUSTER, Step.SCHEMA, Step.REPLICATING,
                             Step.CAUGHT_UP, Step.SWITCHED)


@dataclass(frozen=True)
class UpgradeState:
    step: Step
    old_cluster: str
    new_cluster: str
    new_dir: str  # local: the new cluster's directory; --from/--to: the new cluster's node file
    new_bin: str  # the binaries whose pg_dump and pg_dumpall copy the schema
    nodes: int


class Refused(Exception):
    """This mode cannot run from the recorded step; the message says what to do instead."""


def plan(state: UpgradeState | None, mode: str) -> tuple[str, ...]:
    """What a run in `mode` ("upgrade", "rollback", "finish") does from `state`: a list of
    actions, run in order. Raises Refused when the mode does not apply."""
    step = state.step if state is not None else None
    if mode == "upgrade":
        if step is None or step == Step.ROLLED_BACK:
            return ("check", "new_cluster", "schema", "replicate", "catch_up", "cutover")
        if step in (Step.SWITCHED, Step.FINISHED):
            raise Refused("the upgrade is done" + (
                "; `--finish` retires the old cluster, `--rollback` goes back to it"
                if step == Step.SWITCHED else " and finished"))
        if step == Step.BROKEN:
            raise Refused("a cutover failed half-way; `--rollback` removes the new cluster "
                          "(the old one kept every write), then run the upgrade again")
        if step == Step.CUTTING_BACK:
            raise Refused("a rollback was interrupted; run `--rollback` again to complete it")
        rest: tuple[str, ...] = ()
        if step == Step.CUTTING_OVER:
            rest = ("recover",)
            step = Step.CAUGHT_UP
        after = FORWARD[FORWARD.index(step) + 1:]
        names = {Step.NEW_CLUSTER: "new_cluster", Step.SCHEMA: "schema", Step.REPLICATING: "replicate",
                 Step.CAUGHT_UP: "catch_up", Step.SWITCHED: "cutover"}
        return (*rest, *(names[s] for s in after))
    if mode == "rollback":
        if step is None or step == Step.ROLLED_BACK:
            raise Refused("there is no upgrade to roll back")
        if step == Step.FINISHED:
            raise Refused("the upgrade was finished: the old cluster is retired")
        if step in (Step.SWITCHED, Step.CUTTING_BACK):
            return ("recover", "cutback", "remove_new") if step == Step.CUTTING_BACK else \
                ("cutback", "remove_new")
        # Not cut over yet (or a cutover that failed): clients never left the old cluster.
        return ("recover", "remove_new") if step in (Step.CUTTING_OVER, Step.BROKEN) else ("remove_new",)
    if mode == "finish":
        if step == Step.FINISHED:
            raise Refused("the upgrade is already finished")
        if step != Step.SWITCHED:
            raise Refused("nothing to finish: the cutover has not happened "
                          f"(step reached: {step.value if step else 'none'})")
        return ("finish",)
    raise ValueError(f"unknown mode {mode!r}")


def advance(state: UpgradeState, step: Step) -> UpgradeState:
    return replace(state, step=step)


def load(directory: Path, name: str = STATE_FILE) -> UpgradeState | None:
    path = directory / name
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    try:
        return UpgradeState(step=Step(d["step"]), old_cluster=str(d["old_cluster"]),
                            new_cluster=str(d["new_cluster"]), new_dir=str(d["new_dir"]),
                            new_bin=str(d["new_bin"]), nodes=int(d["nodes"]))
    except (KeyError, ValueError, TypeError) as e:
        raise ValueError(f"{path}: not an upgrade state file ({e})") from None


def save(directory: Path, state: UpgradeState, name: str = STATE_FILE) -> None:
    path = directory / name
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({**asdict(state), "step": state.step.value}, indent=2) + "\n")
    os.replace(tmp, path)
