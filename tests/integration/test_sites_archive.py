"""The WAL archive fallback of a standby site (issue 13, docs/multi-site.md): the stream from the
primary site breaks for longer than the primary keeps WAL, and the standby leader catches up from
the archive, then streams again.

The primary site archives every segment (`archive_command` in its node file), keeps no extra WAL
(`wal_keep_size = 0`) and no slot for the standby site. The standby site's only node is stopped;
the primary writes and switches segments until the segment the standby needs next is gone from
its `pg_wal`. The standby, started again with `restore_command` in its node file, can only get
that segment from the archive: its PostgreSQL log shows the restore, its data directory was not
replaced by a new base backup (a marker file survives), and rows written during and after the
break arrive."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from pgwarden.local.layout import write_node_config
from tests.support.cluster import Cluster, reachable_tmpdir
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

SEGMENT = re.compile(r"^[0-9A-F]{24}$")


def set_node_parameters(cl: Cluster, node: str, params: dict[str, str]) -> None:
    """Write `params` into the node file's postgresql.parameters and restart the node on them."""
    cl.stop_node(node)
    doc = cl.config(node)
    doc["postgresql"].setdefault("parameters", {}).update(params)
    write_node_config(cl.dir / node / "pgwarden.yaml", doc)
    cl.start_node(node)


def segment_of(cl: Cluster, node: str, lsn: str) -> str:
    """The WAL segment file name holding `lsn` on the primary's current timeline."""
    return str(cl.sql(node, "SELECT pg_walfile_name(%s::pg_lsn)", (lsn,))[0][0])


def wal_files(cl: Cluster, node: str) -> set[str]:
    return {str(r[0]) for r in cl.sql(node, "SELECT name FROM pg_ls_waldir()") if SEGMENT.match(str(r[0]))}


@pytest.fixture(scope="module")
def archive() -> Iterator[Path]:
    d = reachable_tmpdir("archive")
    shutil.chown(d, "postgres", "postgres")
    os.chmod(d, 0o700)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_standby_site_catches_up_from_the_archive_after_the_primary_dropped_its_wal(archive: Path) -> None:
    archive_command = f"test ! -f {archive}/%f && cp %p {archive}/%f"
    with Cluster("wa", nodes=1, sets=("parameters.wal_keep_size=0",)) as a:
        set_node_parameters(a, "node1", {"archive_mode": "on", "archive_command": archive_command})
        primary = a.wait_primary()
        with Cluster("wb", nodes=1, standby_of=a.dir) as b:
            set_node_parameters(b, "node1", {"restore_command": f"cp {archive}/%f %p"})
            wait_for(lambda: (b.status("node1") or {}).get("role") == "standby_leader", 60,
                     "the standby site's standby leader")
            a.sql(primary, "CREATE TABLE arch (x int PRIMARY KEY)")
            a.sql(primary, "INSERT INTO arch VALUES (0)")
            wait_for(lambda: has_row(b, 0), 60, "the first row streamed to the standby site")

            marker = Path(b.config("node1")["data_dir"]) / "pgwarden-test-marker"
            marker.write_text("a new base backup would remove this file\n")
            b.stop_node("node1")
            # The standby had everything up to the first row; its stream resumes inside this segment.
            gone = segment_of(a, primary, str(a.sql(primary, "SELECT pg_current_wal_lsn()")[0][0]))

            # Write past the standby's position until the segment it needs is recycled on the primary.
            def dropped() -> bool:
                a.sql(primary, "INSERT INTO arch SELECT coalesce(max(x), 0) + 1 FROM arch")
                a.sql(primary, "SELECT pg_switch_wal()")
                a.sql(primary, "CHECKPOINT")
                return gone not in wal_files(a, primary)
            wait_for(dropped, 120, f"segment {gone} recycled on the primary", interval=0.2)
            wait_for(lambda: (archive / gone).exists(), 60, f"segment {gone} in the archive")
            last = int(a.sql(primary, "SELECT max(x) FROM arch")[0][0])

            b.start_node("node1")
            wait_for(lambda: has_row(b, last), 120, "the rows written during the break on the standby site")
            assert marker.exists(), "the standby site was rebuilt by a base backup, not fed from the archive"
            log = postgresql_log(b)
            assert f'restored log file "{gone}" from archive' in log, log[-2000:]

            # And it streams again afterwards, beyond what the archive holds.
            a.sql(primary, "INSERT INTO arch VALUES (1000000)")
            wait_for(lambda: has_row(b, 1000000), 60, "a row written after the catch-up")
            wait_for(lambda: b.sql("node1", "SELECT status FROM pg_stat_wal_receiver") == [("streaming",)],
                     60, "the standby leader streaming from the primary site again")


def has_row(cl: Cluster, x: int) -> bool:
    try:
        return bool(cl.sql("node1", "SELECT 1 FROM arch WHERE x = %s", (x,)))
    except psycopg.Error:
        return False


def postgresql_log(cl: Cluster) -> str:
    """The standby leader's PostgreSQL log, from the path its agent publishes in /status."""
    path = (cl.status("node1") or {}).get("postgresql_log")
    assert path, "no postgresql_log in the node's /status"
    return Path(str(path)).read_text(errors="replace")
