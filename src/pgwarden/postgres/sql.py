"""SQL access to a PostgreSQL server: bounded connections and the one-round-trip health query.

Every connection has a connect timeout, TCP keepalives, autocommit and a statement timeout, so
no call can hang longer than its caller's budget allows (see SAFETY rule 15).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import psycopg
from psycopg import pq

from pgwarden.core.model import ReplicationStat, lsn_to_int
from pgwarden.core.parameters import SettingSpec


@dataclass(frozen=True)
class ConnParams:
    host: str  # a hostname, an IP or a unix socket directory (starts with '/')
    port: int
    user: str
    password: str | None = None
    dbname: str = "postgres"
    application_name: str = "pgwarden"
    passfile: str | None = None
    ssl: tuple[tuple[str, str], ...] = ()  # libpq options: sslmode, sslrootcert (postgres/tls.py)


def connect(params: ConnParams, timeout: float) -> psycopg.Connection[Any]:
    """Open an autocommit connection; statements are cancelled by the server after `timeout`."""
    kwargs: dict[str, Any] = {
        "host": params.host,
        "port": params.port,
        "user": params.user,
        "dbname": params.dbname,
        "application_name": params.application_name,
        # libpq rounds up to at least 2 s; the caller bounds the whole call if it needs less.
        "connect_timeout": max(1, math.ceil(timeout)),
        "keepalives": 1,
        "keepalives_idle": 2,
        "keepalives_interval": 1,
        "keepalives_count": 3,
        "options": f"-c statement_timeout={max(1, int(timeout * 1000))}",
        "autocommit": True,
    }
    if params.password is not None:
        kwargs["password"] = params.password
    if params.passfile is not None:
        kwargs["passfile"] = params.passfile
    kwargs.update(params.ssl)
    return psycopg.connect(**kwargs)


def replay_timeline(params: ConnParams, timeout: float) -> int | None:
    """The timeline a standby is replaying now, from IDENTIFY_SYSTEM on a replication connection.

    SQL cannot tell it while no WAL receiver streams: pg_control's checkpoint timeline lags a
    promotion until the next restartpoint, and candidates are judged by timeline (rule 9).
    """
    kwargs: dict[str, Any] = {
        "host": params.host, "port": params.port, "user": params.user,
        "application_name": params.application_name, "replication": "true",
        "connect_timeout": max(1, math.ceil(timeout)), "autocommit": True,
    }
    if params.password is not None:
        kwargs["password"] = params.password
    if params.passfile is not None:
        kwargs["passfile"] = params.passfile
    kwargs.update(params.ssl)
    with psycopg.connect(**kwargs) as conn:
        # A walsender speaks only the simple query protocol: go through libpq directly.
        res = conn.pgconn.exec_(b"IDENTIFY_SYSTEM")
        if res.ntuples != 1:
            return None
        raw = res.get_value(0, 1)
        return None if raw is None else int(raw)


@dataclass(frozen=True)
class Health:
    """The health query's answer: role, LSNs, timeline, replication status."""

    in_recovery: bool
    system_id: str
    timeline: int | None
    current_lsn: int | None  # primary: pg_current_wal_lsn()
    received_lsn: int | None  # replica: pg_last_wal_receive_lsn()
    replayed_lsn: int | None  # replica: pg_last_wal_replay_lsn()
    receiver_status: str | None
    sender_host: str | None
    sender_port: int | None
    pending_restart: bool
    sync_standby_names: str
    replication: tuple[ReplicationStat, ...]
    version_num: int

    @property
    def lsn(self) -> int | None:
        if not self.in_recovery:
            return self.current_lsn
        known = [x for x in (self.received_lsn, self.replayed_lsn) if x is not None]
        return max(known) if known else None


# Whether a restart would change a setting. The settings of recovery (recovery_target_*, which
# only a restart changes) do not count on a primary: a promoted standby's config drops them, which
# PostgreSQL reports as pending although they mean nothing outside recovery.
PENDING_RESTART = (
    "SELECT coalesce(bool_or(pending_restart), false) FROM pg_settings "
    "WHERE pg_is_in_recovery() OR name NOT LIKE 'recovery\\_target%'"
)

# One round trip. The primary's timeline comes from its current WAL file name: pg_control's
# checkpoint timeline stays old until the first checkpoint after a promotion. A replica reports
# the timeline its WAL receiver streams, else the last restartpoint's.
HEALTH_QUERY = f"""
SELECT r.in_recovery,
       (SELECT system_identifier::text FROM pg_control_system()),
       CASE WHEN r.in_recovery
            THEN coalesce(w.received_tli, (SELECT timeline_id FROM pg_control_checkpoint()))
            ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int
       END,
       CASE WHEN r.in_recovery THEN NULL ELSE pg_current_wal_lsn()::text END,
       CASE WHEN r.in_recovery THEN pg_last_wal_receive_lsn()::text END,
       CASE WHEN r.in_recovery THEN pg_last_wal_replay_lsn()::text END,
       w.status, w.sender_host, w.sender_port,
       ({PENDING_RESTART}),
       current_setting('synchronous_standby_names'),
       (SELECT coalesce(json_agg(json_build_object(
                 'name', application_name, 'state', state, 'sync_state', sync_state,
                 'flush_lsn', flush_lsn::text)), '[]'::json)
          FROM pg_stat_replication),
       current_setting('server_version_num')::int
  FROM (SELECT pg_is_in_recovery() AS in_recovery) r
  LEFT JOIN (SELECT status, received_tli, sender_host, sender_port
               FROM pg_stat_wal_receiver) w ON true
"""


HEALTH_STATEMENT = b"pgwarden_health"  # the health query's name where a kept session prepared it
_HEALTH_SQL = HEALTH_QUERY.encode()


def prepare_health(conn: psycopg.Connection[Any]) -> None:
    """Prepare the health query on `conn` (a kept session) for `query_health(conn, prepared=True)`."""
    _result(conn, conn.pgconn.prepare(HEALTH_STATEMENT, _HEALTH_SQL), pq.ExecStatus.COMMAND_OK)


def query_health(conn: psycopg.Connection[Any], prepared: bool = False) -> Health:
    """The health query in one round trip, through libpq directly (`prepared`: the statement
    `prepare_health` made on this session). psycopg's cursor layer (adapters, loaders,
    prepared-statement bookkeeping) cost about 0.3 ms of CPU a loop for one row of text
    (issue 16); the row's text is parsed here instead (`health_from_text`)."""
    pg = conn.pgconn
    res = pg.exec_prepared(HEALTH_STATEMENT, None) if prepared else pg.exec_params(_HEALTH_SQL, None)
    return health_from_result(conn, res)


def health_from_result(conn: psycopg.Connection[Any], res: pq.abc.PGresult) -> Health:
    """The health query's answer from its libpq result on `conn` (raises the error it carries)."""
    _result(conn, res, pq.ExecStatus.TUPLES_OK)
    if res.ntuples != 1:
        raise psycopg.InterfaceError(f"health query returned {res.ntuples} rows")
    enc = conn.info.encoding
    return health_from_text([None if (v := res.get_value(0, i)) is None else v.decode(enc)
                             for i in range(res.nfields)])


def _result(conn: psycopg.Connection[Any], res: pq.abc.PGresult, want: pq.ExecStatus) -> None:
    """Raise the error `res` carries (psycopg's class for its SQLSTATE) unless it is `want`."""
    if res.status != want:
        raise psycopg.errors.error_from_result(res, encoding=conn.info.encoding)


def _bool(text: str | None) -> bool:
    return text == "t"


def health_from_text(row: Sequence[str | None]) -> Health:
    """The health query's row in PostgreSQL's text output (bool 't'/'f', json as text). An
    idle server answers the same row loop after loop: the same text gives the same (immutable)
    answer without parsing it again (issue 16)."""
    return _health_from_row(tuple(row))


@lru_cache(maxsize=4)
def _health_from_row(row: tuple[str | None, ...]) -> Health:
    if len(row) != 13:
        raise psycopg.InterfaceError(f"health query returned {len(row)} columns")
    reps = json.loads(row[11]) if row[11] is not None else []
    replication = tuple(
        ReplicationStat(
            name=str(r.get("name") or ""),
            state=str(r.get("state") or ""),
            sync_state=str(r.get("sync_state") or ""),
            flush_lsn=lsn_to_int(r.get("flush_lsn")),
        )
        for r in reps
    )
    return Health(
        in_recovery=_bool(row[0]),
        system_id=str(row[1]),
        timeline=None if row[2] is None else int(row[2]),
        current_lsn=lsn_to_int(row[3]),
        received_lsn=lsn_to_int(row[4]),
        replayed_lsn=lsn_to_int(row[5]),
        receiver_status=row[6],
        sender_host=row[7],
        sender_port=None if row[8] is None else int(row[8]),
        pending_restart=_bool(row[9]),
        sync_standby_names=str(row[10]),
        replication=replication,
        version_num=int(str(row[12])),
    )


def needs_replay_timeline(health: Health) -> bool:
    """A standby with no WAL receiver: the health query's timeline is pg_control's, which lags
    until a restartpoint (`replay_timeline` reads the one it replays)."""
    return health.in_recovery and health.receiver_status != "streaming"


@dataclass(frozen=True)
class LiveSync:
    """synchronous_standby_names as the answering session runs it, with the server's role and
    (on a primary) its current WAL position."""

    names: str
    in_recovery: bool
    current_lsn: int | None


def query_live_sync(conn: psycopg.Connection[Any]) -> LiveSync:
    row = conn.execute(
        "SELECT current_setting('synchronous_standby_names'), r, "
        "CASE WHEN r THEN NULL ELSE pg_current_wal_lsn()::text END "
        "FROM pg_is_in_recovery() r"
    ).fetchone()
    if row is None:
        raise psycopg.InterfaceError("synchronous_standby_names query returned no row")
    return LiveSync(names=str(row[0]), in_recovery=bool(row[1]), current_lsn=lsn_to_int(row[2]))


def current_generation(conn: psycopg.Connection[Any]) -> str | None:
    """The `pgwarden.generation` marker of the configuration this session runs with."""
    row = conn.execute("SELECT current_setting('pgwarden.generation', true)").fetchone()
    return None if row is None else row[0]


def setting_specs(conn: psycopg.Connection[Any]) -> list[SettingSpec]:
    """The server's catalogue of parameters (pg_settings), for checking values before storing them."""
    rows = conn.execute(
        "SELECT name, vartype, unit, min_val, max_val, coalesce(enumvals, '{}'::text[]) FROM pg_settings"
    ).fetchall()
    return [SettingSpec(name, vartype, unit, low, high, tuple(enum))
            for name, vartype, unit, low, high, enum in rows]
