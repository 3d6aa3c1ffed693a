"""The pure parts of base backup progress (postgres/backup_progress.py) and of `ctl reinit`'s wait
(cli/reinit.py): which rows are whose, what a bar says, when a reinitialised member is back."""

from __future__ import annotations

import io

from rich.console import Console

from pgwarden.cli.reinit import Seen, clone_source, describe, refused, seen_from_status, streams_again
from pgwarden.core.model import MemberInfo, Role
from pgwarden.postgres.backup_progress import (
    BackupRow,
    Bars,
    ViewRow,
    backups_by_member,
    clone_progress,
    plain_line,
    view_row,
)
from tests.core.builders import view as cluster_view


def test_rows_are_keyed_by_member_and_other_backups_left_out() -> None:
    # As QUERY returns them: application_name, phase, backup_total, backup_streamed.
    rows = [("pgwarden-clone-node2", "streaming database files", 30_000_000, 10_000_000),
            ("pgwarden-clone-node3", "waiting for checkpoint to finish", None, 0),
            ("pg_basebackup", "streaming database files", 5, 10),
            ("pgwarden-clone-", "initializing", None, 0), (None, "initializing", None, 0)]
    assert backups_by_member(rows) == {
        "node2": BackupRow("node2", "streaming database files", 10_000_000, 30_000_000),
        "node3": BackupRow("node3", "waiting for checkpoint to finish", 0, None),
    }


def test_a_bar_shows_the_backup_while_it_runs_else_the_members_state() -> None:
    b = BackupRow("node2", "streaming database files", 10_000_000, 30_000_000)
    assert view_row("node2", "cloning from node1", b) == \
        ViewRow("node2", "node2: streaming database files", 10_000_000, 30_000_000)
    # The estimate can fall short of what was sent: the total never shows less than done.
    assert view_row("node2", None, BackupRow("node2", "transferring wal files", 40, 30)).total == 40
    assert view_row("node2", "starting", None) == ViewRow("node2", "node2: starting", None, None)
    assert view_row("node2", None, None).text == "node2: state unknown"
    assert plain_line(view_row("node2", "x", b)) == "node2: streaming database files (10.0/30.0 MB)"
    assert plain_line(ViewRow("node2", "node2: running", None, None)) == "node2: running"
    assert plain_line(ViewRow("n", "n: initializing", 0, None)) == "n: initializing"
    assert plain_line(ViewRow("n", "n: streaming database files", 2_000_000, None)) == \
        "n: streaming database files (2.0 MB)"


def test_bars_draw_on_a_terminal_only() -> None:
    out = io.StringIO()
    with Bars(Console(file=out, force_terminal=True, width=120)) as bars:
        assert bars.live
        bars.show(ViewRow("node2", "node2: streaming database files", 10_000_000, 30_000_000))
    assert "node2: streaming database files" in out.getvalue() and "30.0 MB" in out.getvalue()
    quiet = io.StringIO()
    with Bars(Console(file=quiet, force_terminal=False)) as bars:
        assert not bars.live
        bars.show(ViewRow("node2", "node2: x", 1, 2))
    assert quiet.getvalue() == ""


def test_clone_progress_prints_one_line_at_the_end_when_not_a_terminal() -> None:
    out = io.StringIO()
    with clone_progress("node1", Console(file=out, force_terminal=False, width=200)) as report:
        report(0, 2_000_000)
        report(2_000_000, 2_000_000)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pgwarden: copied 2.0 MB from node1 in "), lines


def _seen(**kw: object) -> Seen:
    base: dict[str, object] = dict(role="replica", state="running", running=True, streaming=True,
                                   postmaster_pid=200)
    base.update(kw)
    return Seen(**base)  # type: ignore[arg-type]


def test_a_member_is_back_only_with_a_new_postmaster_or_after_it_was_seen_down() -> None:
    assert not streams_again(_seen(postmaster_pid=100), 100, went_down=False)  # the old state
    assert streams_again(_seen(postmaster_pid=200), 100, went_down=False)
    assert streams_again(_seen(postmaster_pid=100), 100, went_down=True)
    assert not streams_again(_seen(streaming=False), 100, went_down=True)
    assert not streams_again(_seen(state="cloning from node1", running=False), 100, went_down=True)
    assert not streams_again(_seen(role="unknown"), 100, went_down=True)


def test_status_bodies_are_read_and_described() -> None:
    body = {"role": "replica", "state": "running", "running": True, "replication_state": "streaming",
            "postmaster_pid": 7, "upstream": "node1", "postgresql_log": "/d/data.log", "start_error": None}
    assert seen_from_status(body) == Seen("replica", "running", True, True, 7, "node1", "/d/data.log", "", "")
    no = {**body, "message": "reinitialize refused: no running leader to clone from"}
    assert refused(seen_from_status(no)) == "reinitialize refused: no running leader to clone from"
    assert refused(seen_from_status({**body, "message": "replica of node1, streaming"})) is None
    assert seen_from_status({"error": "x"}) is None and seen_from_status(None) is None
    assert describe(None) == "publishing no state (is its agent running?)"
    assert describe(_seen(streaming=False)) == "replica, running, not streaming"
    assert describe(_seen(role="unknown", state="stopped", running=False, start_error="FATAL: x")) == \
        "unknown, stopped; PostgreSQL did not start: FATAL: x"


def test_the_clone_source_is_the_member_the_state_names_else_the_leader() -> None:
    members = {n: MemberInfo(n, "", "127.0.0.1", p, Role.REPLICA) for n, p in
               (("node1", 5432), ("node2", 5433), ("node3", 5434))}
    view = cluster_view("node1", members.values())
    assert clone_source(_seen(state="cloning from node3"), view) == members["node3"]
    assert clone_source(_seen(state="stopped"), view) == members["node1"]
    assert clone_source(None, view) == members["node1"]
    assert clone_source(None, None) is None
