"""PgBouncer's owner line: which cluster's leader may drive it during an upgrade."""

from __future__ import annotations

from pathlib import Path

from pgwarden.routing.pgbouncer import OWNER_PREFIX, ini_lock, ini_owner, may_drive, set_ini_owner, set_owner

INI = "[databases]\npostgres = host=127.0.0.1 port=5432\n"


def test_without_an_owner_line_every_leader_drives_it() -> None:
    assert ini_owner(INI) is None and may_drive(INI, "a") and may_drive(INI, "b")


def test_the_owner_line_names_the_one_cluster_that_may() -> None:
    text = set_ini_owner(INI, "old")
    assert text.startswith(f"{OWNER_PREFIX} old\n") and text.endswith(INI)
    assert may_drive(text, "old") and not may_drive(text, "pg18")
    moved = set_ini_owner(text, "pg18")
    assert ini_owner(moved) == "pg18" and moved.count(OWNER_PREFIX) == 1
    assert set_ini_owner(moved, None) == INI


def test_set_owner_waits_for_routers_holding_the_lock(tmp_path: Path) -> None:
    ini = tmp_path / "pgbouncer.ini"
    ini.write_text(INI)
    with ini_lock(ini, shared=True) as got:
        assert got
        with ini_lock(ini, shared=False, wait=False) as other:
            assert not other  # the upgrade cannot change the owner while a router acts
    set_owner(ini, "pg18")
    assert ini_owner(ini.read_text()) == "pg18"
