"""Read a data directory's pg_control through `pg_controldata` (works while PostgreSQL is down).

`parse_controldata` is pure; `read_controldata` runs the tool as the OS user with LC_ALL=C so the
labels are the English ones parsed here.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from pgwarden.core.model import lsn_to_int
from pgwarden.postgres import osuser

# States a primary leaves behind; "in crash recovery" counts too: only a primary (or a standby
# without standby.signal, which then also comes up as a primary) does crash recovery. "shutting
# down" is a primary killed during its shutdown (or end-of-recovery) checkpoint: a standby's
# shutdown restartpoint leaves "in archive recovery" or "shut down in recovery".
_PRIMARY_STATES = {"in production", "shut down", "in crash recovery", "shutting down"}
_CLEAN_STATES = {"shut down", "shut down in recovery"}


class ControlDataError(Exception):
    """pg_controldata failed or printed something we cannot read."""


@dataclass(frozen=True)
class ControlData:
    system_id: str
    state: str
    timeline: int  # Latest checkpoint's TimeLineID
    checkpoint_lsn: int  # Latest checkpoint location
    redo_lsn: int | None
    min_recovery_end_lsn: int  # 0 when not set
    min_recovery_end_timeline: int
    data_checksums: bool
    wal_log_hints: bool
    raw: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def was_primary(self) -> bool:
        return self.state in _PRIMARY_STATES

    @property
    def clean_shutdown(self) -> bool:
        return self.state in _CLEAN_STATES


def parse_controldata(text: str) -> ControlData:
    raw: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            raw[key.strip()] = value.strip()

    def need(key: str) -> str:
        try:
            return raw[key]
        except KeyError:
            raise ControlDataError(f"pg_controldata output lacks {key!r}") from None

    def lsn(key: str) -> int:
        value = lsn_to_int(need(key))
        if value is None:
            raise ControlDataError(f"pg_controldata: empty {key!r}")
        return value

    try:
        redo = lsn_to_int(raw.get("Latest checkpoint's REDO location"))
        return ControlData(
            system_id=need("Database system identifier"),
            state=need("Database cluster state"),
            timeline=int(need("Latest checkpoint's TimeLineID")),
            checkpoint_lsn=lsn("Latest checkpoint location"),
            redo_lsn=redo,
            min_recovery_end_lsn=lsn("Minimum recovery ending location"),
            min_recovery_end_timeline=int(raw.get("Min recovery ending loc's timeline", "0")),
            data_checksums=raw.get("Data page checksum version", "0") not in ("0", ""),
            wal_log_hints=raw.get("wal_log_hints setting", "off") == "on",
            raw=raw,
        )
    except ValueError as e:
        raise ControlDataError(f"pg_controldata: unreadable value: {e}") from e


def read_controldata(bin_dir: Path, data_dir: Path, os_user: str, timeout: float) -> ControlData:
    res = osuser.run_as(os_user, [str(bin_dir / "pg_controldata"), "-D", str(data_dir)], timeout)
    if res.returncode != 0:
        raise ControlDataError(f"pg_controldata failed ({res.returncode}): {res.stderr.strip()}")
    return parse_controldata(res.stdout)


def unstarted_backup(data_dir: Path) -> bool:
    """A base backup (or a pg_rewind result) whose recovery has not started: it holds a
    backup_label, and a base backup's pg_control is its source's copy ("in production"), so
    `was_primary` does not tell. It was never a primary of its own."""
    return (data_dir / "backup_label").exists()


def primary_start_refusal(bin_dir: Path, data_dir: Path, os_user: str, timeout: float) -> str | None:
    """Why the stopped `data_dir` must not be started as a primary, None when it may.

    A data directory that was last a standby becomes a primary only by promotion, which opens a
    new timeline. Started as a primary (without standby.signal) it would take writes on its old
    timeline: a fork that neither timeline comparison nor pg_rewind can see (SAFETY rule 4).
    """
    how = "start it as a standby and promote it"
    if unstarted_backup(data_dir):
        return f"it holds a backup_label (a base backup or rewound directory that never ran); {how}"
    try:
        cd = read_controldata(bin_dir, data_dir, os_user, timeout)
    except (ControlDataError, OSError, subprocess.SubprocessError) as e:
        return f"cannot read pg_control to tell whether it was a standby: {e}"
    if not cd.was_primary:
        return f"pg_control says it was last a standby (state {cd.state!r}); {how}"
    return None
