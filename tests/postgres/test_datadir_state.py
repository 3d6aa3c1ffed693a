"""postgres/datadir_state.py gives the answers the pathlib code it replaced gave (kept here as the
reference), on real directories and real processes: data_state for each kind of directory, and
postmaster_pid for a live process in the directory, through a symlink, elsewhere, gone, and for
a garbled pid file."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgwarden.core.model import DataState
from pgwarden.postgres.datadir_state import data_state, exists, postmaster_pid
from pgwarden.procinfo import pid_alive


def _old_data_state(d: Path) -> DataState:
    try:
        if not d.exists() or not any(d.iterdir()):
            return DataState.EMPTY
    except OSError:
        return DataState.BROKEN
    if (d / "PG_VERSION").is_file() and (d / "global" / "pg_control").is_file():
        return DataState.VALID
    return DataState.BROKEN


def _old_postmaster_pid(d: Path) -> int | None:
    try:
        first = (d / "postmaster.pid").read_text().splitlines()[0]
        pid = int(first.strip())
    except (OSError, ValueError, IndexError):
        return None
    if not pid_alive(pid):
        return None
    try:
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return pid
    return pid if cwd == d.resolve() else None


def _valid(d: Path) -> Path:
    (d / "global").mkdir(parents=True)
    (d / "PG_VERSION").write_text("18\n")
    (d / "global" / "pg_control").write_bytes(b"\0" * 16)
    return d


def _layouts(tmp: Path) -> dict[str, Path]:
    (tmp / "empty").mkdir()
    (tmp / "stray").mkdir()
    (tmp / "stray" / "x").write_text("x")
    (tmp / "a_file").write_text("x")
    half = _valid(tmp / "half")
    (half / "global" / "pg_control").unlink()
    dir_not_file = _valid(tmp / "dir_not_file")
    (dir_not_file / "PG_VERSION").unlink()
    (dir_not_file / "PG_VERSION").mkdir()
    _valid(tmp / "valid")
    (tmp / "link").symlink_to(tmp / "valid")
    (tmp / "loop").symlink_to(tmp / "loop")
    return {"absent": tmp / "absent", "empty": tmp / "empty", "stray": tmp / "stray",
            "a_file": tmp / "a_file", "under_a_file": tmp / "a_file" / "sub", "half": half,
            "dir_not_file": dir_not_file, "valid": tmp / "valid", "link": tmp / "link",
            "loop": tmp / "loop"}


def test_data_state_is_the_old_answer_for_every_layout(tmp_path: Path) -> None:
    seen = set()
    for name, d in _layouts(tmp_path).items():
        new = data_state(str(d))
        assert new == _old_data_state(d), name
        seen.add(new)
    assert seen == {DataState.EMPTY, DataState.BROKEN, DataState.VALID}


def test_exists_is_pathlibs_answer(tmp_path: Path) -> None:
    layouts = _layouts(tmp_path)
    for name, d in layouts.items():
        assert exists(str(d)) == d.exists(), name
    assert {exists(str(d)) for d in layouts.values()} == {True, False}


@pytest.fixture
def sleeper(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    d = _valid(tmp_path / "data")
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], cwd=d)
    try:
        yield proc, d
    finally:
        proc.kill()
        proc.wait(10)


def test_postmaster_pid_is_the_old_answer(tmp_path: Path,
                                          sleeper: tuple[subprocess.Popen[bytes], Path]) -> None:
    proc, d = sleeper
    (tmp_path / "link").symlink_to(d)
    elsewhere = _valid(tmp_path / "elsewhere")
    cases = {
        "live, in the directory": (d, f"{proc.pid}\n{d}\n"),
        "live, through a symlink": (tmp_path / "link", f"{proc.pid}\n"),
        "live, in another directory": (elsewhere, f"{proc.pid}\n"),
        "no such process": (elsewhere, "999999999\n"),
        "garbled": (elsewhere, "not a pid\n"),
        "empty file": (elsewhere, ""),
    }
    answers = {}
    for name, (where, text) in cases.items():
        (where / "postmaster.pid").write_text(text)
        answers[name] = postmaster_pid(str(where))
        assert answers[name] == _old_postmaster_pid(where), name
    (elsewhere / "postmaster.pid").unlink()
    assert postmaster_pid(str(elsewhere)) is None is _old_postmaster_pid(elsewhere)
    assert answers["live, in the directory"] == proc.pid
    assert answers["live, through a symlink"] == proc.pid
    assert answers["live, in another directory"] is None
