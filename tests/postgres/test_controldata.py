"""pg_controldata parsing on captured output (PostgreSQL 18)."""

from __future__ import annotations

import pytest

from pgwarden.postgres.controldata import ControlDataError, parse_controldata

SAMPLE = """\
pg_control version number:            1800
Catalog version number:               202506291
Database system identifier:           7712176661732893564
Database cluster state:               in production
pg_control last modified:             Wed Nov 25 18:24:17 2026
Latest checkpoint location:           0/16EF738
Latest checkpoint's REDO location:    0/16EF738
Latest checkpoint's REDO WAL file:    000000010000000000000001
Latest checkpoint's TimeLineID:       1
Latest checkpoint's PrevTimeLineID:   1
Latest checkpoint's full_page_writes: on
Latest checkpoint's NextXID:          0:753
Latest checkpoint's oldestCommitTsXid:0
Time of latest checkpoint:            Wed Nov 25 18:24:17 2026
Fake LSN counter for unlogged rels:   0/3E8
Minimum recovery ending location:     0/0
Min recovery ending loc's timeline:   0
Backup start location:                0/0
End-of-backup record required:        no
wal_level setting:                    replica
wal_log_hints setting:                on
max_connections setting:              100
Data page checksum version:           1
Mock authentication nonce:            e0e086948013fdbd5e6866e50e89e4f5496a4f74ee0d883da77be5657e81b80c
"""


def test_primary_in_production() -> None:
    cd = parse_controldata(SAMPLE)
    assert cd.system_id == "7712176661732893564"
    assert cd.state == "in production"
    assert cd.timeline == 1
    assert cd.checkpoint_lsn == 0x16EF738
    assert cd.redo_lsn == 0x16EF738
    assert cd.min_recovery_end_lsn == 0
    assert cd.data_checksums and cd.wal_log_hints
    assert cd.was_primary and not cd.clean_shutdown


def test_replica_shut_down_in_recovery() -> None:
    text = (SAMPLE.replace("in production", "shut down in recovery")
            .replace("TimeLineID:       1", "TimeLineID:       3")
            .replace("ending location:     0/0", "ending location:     1/A0")
            .replace("Data page checksum version:           1", "Data page checksum version:           0")
            .replace("wal_log_hints setting:                on", "wal_log_hints setting:                off"))
    cd = parse_controldata(text)
    assert cd.state == "shut down in recovery"
    assert cd.timeline == 3
    assert cd.min_recovery_end_lsn == (1 << 32) | 0xA0
    assert not cd.was_primary and cd.clean_shutdown
    assert not cd.data_checksums and not cd.wal_log_hints


@pytest.mark.parametrize(("state", "primary", "clean"), [
    ("shut down", True, True),
    ("in archive recovery", False, False),
    ("in crash recovery", True, False),
    ("shutting down", True, False),
    ("shut down in recovery", False, True),
])
def test_states(state: str, primary: bool, clean: bool) -> None:
    cd = parse_controldata(SAMPLE.replace("in production", state))
    assert (cd.was_primary, cd.clean_shutdown) == (primary, clean)


def test_missing_field_is_an_error() -> None:
    with pytest.raises(ControlDataError, match="Database system identifier"):
        parse_controldata("\n".join(line for line in SAMPLE.splitlines() if "identifier" not in line))
