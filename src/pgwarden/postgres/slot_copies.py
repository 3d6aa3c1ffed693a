"""Copies of the primary's logical slots on a standby (PostgreSQL 15, 16; see core/slot_copies.py):
reading a slot's state file and the decoding snapshots from the primary, writing them into our
pg_replslot and pg_logical/snapshots, advancing and dropping copies."""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

import psycopg

from pgwarden.core.logical import SlotInfo
from pgwarden.core.model import lsn_to_int

# Logical slots worth keeping: not temporary, not a subscription's table-copy slot.
SLOTS_SQL = (
    "SELECT slot_name, confirmed_flush_lsn::text, wal_status, {flags} FROM pg_replication_slots "
    "WHERE slot_type = 'logical' AND NOT temporary AND slot_name !~ '^pg_[0-9]+_sync_'"
)


def read_slots(conn: psycopg.Connection[Any]) -> dict[str, SlotInfo]:
    flags = "failover, synced" if conn.info.server_version >= 170000 else "false, false"
    rows = conn.execute(SLOTS_SQL.format(flags=flags)).fetchall()
    return {str(n): SlotInfo(lsn_to_int(c), lost=w == "lost", failover=bool(f), synced=bool(y))
            for n, c, w, f, y in rows}


def fetch_state(primary: psycopg.Connection[Any], name: str) -> tuple[bytes, int] | None:
    """The slot's state file and an upper bound of the position it holds (the in-memory one,
    read after the file: the file is never ahead of memory). None: no such slot."""
    try:
        row = primary.execute("SELECT pg_read_binary_file(%s)", (f"pg_replslot/{name}/state",)).fetchone()
    except psycopg.errors.UndefinedFile:
        return None
    pos = primary.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
                          (name,)).fetchone()
    if row is None or pos is None or pos[0] is None:
        return None
    return bytes(row[0]), lsn_to_int(pos[0]) or 0


# ReplicationSlotOnDisk (slot.c): magic, checksum, version, length, then the persistent data:
# name (NAMEDATALEN 64), database, persistency, xmin, catalog_xmin, restart_lsn. The same on 15-18.
STATE_MAGIC = 0x1051CA1
_RESTART_LSN_AT = 16 + 64 + 4 * 4


def state_restart_lsn(state: bytes) -> int | None:
    """Where a slot copied from this state file starts decoding; None if the bytes are not a slot
    state file this code knows (then nothing is checked against it)."""
    if len(state) < _RESTART_LSN_AT + 8 or struct.unpack_from("=I", state, 0)[0] != STATE_MAGIC:
        return None
    return int(struct.unpack_from("=Q", state, _RESTART_LSN_AT)[0])


def has_wal_at(conn: psycopg.Connection[Any], lsn: int) -> bool:
    """Does our pg_wal hold a segment file (of any timeline) for `lsn`? A copy whose restart_lsn
    lies in a segment we removed can never decode: loading it costs a restart for nothing."""
    row = conn.execute("SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'").fetchone()
    size = int(row[0]) if row else 16 << 20
    per_id = 0x100000000 // size
    want = lsn // size
    for (name,) in conn.execute("SELECT name FROM pg_ls_waldir()").fetchall():
        name = str(name)
        if len(name) == 24 and all(c in "0123456789ABCDEF" for c in name) and \
                int(name[8:16], 16) * per_id + int(name[16:24], 16) == want:
            return True
    return False


def _write_synced(path: Path, data: bytes, uid: int, gid: int) -> None:
    """A file of ours in the data directory: mode 0600, synced, owned by the PostgreSQL user."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    if os.geteuid() == 0:
        os.chown(path, uid, gid)


def _fsync_dir(d: Path) -> None:
    dfd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def write_state(data_dir: Path, name: str, state: bytes, uid: int, gid: int) -> None:
    """pg_replslot/<name>/state, as PostgreSQL writes it (directory 0700, file 0600, synced)."""
    d = data_dir / "pg_replslot" / name
    d.mkdir(mode=0o700, exist_ok=True)
    if os.geteuid() == 0:
        os.chown(d, uid, gid)
    _write_synced(d / "state", state, uid, gid)
    _fsync_dir(d)


def snapshot_file(lsn: int) -> str:
    """The name PostgreSQL gives the decoding snapshot it serialized at `lsn`."""
    return f"{lsn >> 32:X}-{lsn & 0xFFFFFFFF:X}.snap"


def restart_points(conn: psycopg.Connection[Any]) -> list[int]:
    """Where our logical slots start decoding (restart_lsn)."""
    rows = conn.execute("SELECT restart_lsn::text FROM pg_replication_slots WHERE slot_type = 'logical' "
                        "AND NOT temporary AND restart_lsn IS NOT NULL").fetchall()
    return [lsn for (text,) in rows if (lsn := lsn_to_int(text)) is not None]


def fetch_snapshot(primary: psycopg.Connection[Any], name: str) -> bytes | None:
    """The upstream's serialized decoding snapshot `name`, None when it has none (removed by a
    checkpoint, or a cascading upstream that never decoded)."""
    try:
        row = primary.execute("SELECT pg_read_binary_file(%s)", (f"pg_logical/snapshots/{name}",)).fetchone()
    except psycopg.errors.UndefinedFile:
        return None
    return None if row is None else bytes(row[0])


def write_snapshots(data_dir: Path, files: dict[str, bytes], uid: int, gid: int) -> None:
    """Into pg_logical/snapshots as PostgreSQL writes them: a temporary file, synced, renamed."""
    d = data_dir / "pg_logical" / "snapshots"
    for name, data in files.items():
        tmp = d / f"{name}.pgwarden.tmp"
        _write_synced(tmp, data, uid, gid)
        os.rename(tmp, d / name)
    if files:
        _fsync_dir(d)


def replay_lsn(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT pg_last_wal_replay_lsn()::text").fetchone()
    return (lsn_to_int(row[0]) if row else None) or 0


def advance(conn: psycopg.Connection[Any], name: str, lsn: str) -> None:
    conn.execute("SELECT pg_replication_slot_advance(%s, %s::pg_lsn)", (name, lsn))


def drop(conn: psycopg.Connection[Any], name: str) -> None:
    conn.execute("SELECT pg_drop_replication_slot(%s) FROM pg_replication_slots "
                 "WHERE slot_name = %s AND NOT active", (name, name))
