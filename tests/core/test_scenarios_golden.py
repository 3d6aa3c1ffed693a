"""Golden scenario scripts (`tests/core/testdata/*.txt`, see `tests/core/sim/script.py`): each
command's logged events and decisions must match the file. After an intended change of behaviour
or wording, regenerate with `PGWARDEN_REWRITE=1` and read the diff. The world's invariants are
checked throughout, as in every scenario."""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import pytest

from tests.core.sim.script import play

TESTDATA = Path(__file__).parent / "testdata"


@pytest.mark.parametrize("path", sorted(TESTDATA.glob("*.txt")), ids=lambda p: p.stem)
def test_golden_script(path: Path) -> None:
    want, got = play(path, rewrite=os.environ.get("PGWARDEN_REWRITE") == "1")
    diff = "".join(difflib.unified_diff(want.splitlines(True), got.splitlines(True), "expected", "now"))
    assert want == got, f"{path.name} differs (PGWARDEN_REWRITE=1 rewrites it):\n{diff}"
