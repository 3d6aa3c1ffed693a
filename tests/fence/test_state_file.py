"""fence/state.py's state file: what the agent writes is what `Path.write_text(json.dumps(asdict(...)))`
wrote before (the fencer of a running older agent reads it), and what the fencer reads back."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import pytest

from pgwarden.fence.state import FenceState, read_state, write_state


@pytest.mark.parametrize("st", [
    FenceState(agent_pid=12, armed=True, deadline=1234.5678, postmaster_pid=99, postmaster_start=4242,
               data_dir="/var/lib/pg/data"),
    FenceState(agent_pid=12, armed=False, deadline=0.0),
])
def test_written_bytes_are_the_old_ones_and_read_back(tmp_path: Path, st: FenceState) -> None:
    path = tmp_path / "fence.json"
    write_state(path, st)
    assert path.read_bytes() == json.dumps(asdict(st)).encode()
    assert read_state(path) == st
    assert not (tmp_path / "fence.tmp").exists()  # renamed over the state file


def test_a_longer_state_then_a_shorter_one_leaves_no_tail(tmp_path: Path) -> None:
    path = tmp_path / "fence.json"
    write_state(path, FenceState(1, True, 1.0, 123456, 7890123, "/a/very/long/data/directory"))
    os.replace(path, tmp_path / "fence.tmp")  # the next write reuses (truncates) the temp file
    short = FenceState(1, False, 0.0)
    write_state(path, short)
    assert read_state(path) == short
