"""Retargeting a database in pgbouncer.ini: only host= and port= of the named entries change."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pgwarden.routing.pgbouncer import rewrite_targets, set_database_targets

INI = """\
;; comment [databases]
[databases]
app = host=10.0.0.1 port=5432 dbname=app pool_size=10
; other = host=10.0.0.1 port=5432
reports = dbname=app host=10.0.0.1 port=5432 user='rep ort'

[pgbouncer]
listen_port = 6432
app = not-a-database
"""


def test_only_named_entries_change() -> None:
    out = set_database_targets(INI, ["app"], "10.0.0.2", 5433)
    assert "app = host=10.0.0.2 port=5433 dbname=app pool_size=10\n" in out
    assert "reports = dbname=app host=10.0.0.1 port=5432" in out
    assert "; other = host=10.0.0.1 port=5432" in out
    assert "app = not-a-database" in out  # same key in another section is left alone


def test_quoted_values_are_kept() -> None:
    out = set_database_targets(INI, ["app", "reports"], "db2", 5432)
    assert "reports = host=db2 port=5432 dbname=app user='rep ort'\n" in out


def test_missing_entry_is_an_error() -> None:
    with pytest.raises(ValueError, match="nosuch"):
        set_database_targets(INI, ["app", "nosuch"], "db2", 5432)


def test_rewrite_is_atomic_and_keeps_the_mode(tmp_path: Path) -> None:
    path = tmp_path / "pgbouncer.ini"
    path.write_text(INI)
    os.chmod(path, 0o640)
    assert rewrite_targets(path, ["app"], "db2", 6000) is True
    assert "app = host=db2 port=6000" in path.read_text()
    assert path.stat().st_mode & 0o777 == 0o640
    assert rewrite_targets(path, ["app"], "db2", 6000) is False
    assert [p.name for p in tmp_path.iterdir()] == ["pgbouncer.ini"]
