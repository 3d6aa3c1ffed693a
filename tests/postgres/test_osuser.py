"""Running commands as the PostgreSQL OS user and handing it files and directories."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pgwarden.postgres import osuser
from tests.support.pg import NEEDS_POSTGRES

pytestmark = NEEDS_POSTGRES


def test_existing_user_is_found() -> None:
    found = osuser.lookup("postgres")
    assert found is not None
    assert osuser.ensure_os_user("postgres") == (found.uid, found.gid)


def test_run_as_switches_user_and_cleans_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGPASSWORD", "leak")
    res = osuser.run_as("postgres", ["sh", "-c", 'id -un; id -G; echo "$HOME|$PGPASSWORD|$X"; pwd'],
                        timeout=10, env={"X": "given"})
    name, groups, env_line, cwd = res.stdout.splitlines()
    found = osuser.lookup("postgres")
    assert found is not None
    assert name == "postgres"
    assert groups.split() == [str(found.gid)]  # no supplementary groups inherited from root
    assert env_line == f"{found.home}||given"
    assert cwd == "/"


def test_spawn_as_runs_in_its_own_session(tmp_path: Path) -> None:
    proc = osuser.spawn_as("postgres", ["sleep", "30"])
    try:
        assert os.getsid(proc.pid) == proc.pid
    finally:
        proc.kill()
        proc.wait(10)


def test_prepare_dir_and_give_file(tmp_path: Path) -> None:
    found = osuser.lookup("postgres")
    assert found is not None
    d = tmp_path / "a" / "b"
    osuser.prepare_dir(d, found.uid, found.gid)
    st = d.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (found.uid, found.gid, 0o700)
    f = d / "secret"
    osuser.give_file(f, "x", found.uid, found.gid, 0o600)
    st = f.stat()
    assert (st.st_uid, st.st_mode & 0o777, f.read_text()) == (found.uid, 0o600, "x")
