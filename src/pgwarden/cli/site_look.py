"""What the site commands (cli/sites.py) look at before they act: the other site's PostgreSQL
through a DSN (reachable? writable? how far?), its agents' GET /site, and how far this site's
standby leader has replayed. Every call has a short deadline: an unreachable site is an answer."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgwarden.agent.sites import SiteProbe
from pgwarden.config.schema import NodeConfig
from pgwarden.core.model import ClusterView, Role, SiteReading, int_to_lsn, lsn_to_int
from pgwarden.errors import CliError
from pgwarden.report import ssl_options
from pgwarden.tls.contexts import ContextSource, client_context

CONNECT_TIMEOUT = 3


def superuser_dsn(dsn: str, cfg: NodeConfig, attrs: str | None = None) -> str:
    """`dsn` as this node file's superuser (a standby site shares the source's roles)."""
    try:
        d: dict[str, Any] = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as e:
        raise CliError(f"not a valid libpq connection string: {e}") from None
    su = cfg.postgresql.superuser
    try:
        d.update(user=su.username, password=su.secret())
    except ValueError as e:
        raise CliError(str(e)) from None
    d.setdefault("dbname", "postgres")
    for k, v in ssl_options(cfg.postgresql.tls).items():  # a DSN's own TLS options win
        d.setdefault(k, v)
    d["connect_timeout"] = str(CONNECT_TIMEOUT)
    d["application_name"] = "pgwarden-ctl"
    if attrs is not None:
        d["target_session_attrs"] = attrs
    return make_conninfo(**d)


@dataclass(frozen=True)
class Remote:
    """The other site's PostgreSQL as seen through a DSN."""

    reachable: bool
    writable: bool = False
    lsn: int | None = None  # a primary's current WAL position, else the newest it received
    system_id: str | None = None
    where: str = ""  # host:port that answered
    error: str = ""


def look_at(dsn: str, cfg: NodeConfig) -> Remote:
    """Writable when some host in `dsn` accepts read-write sessions; otherwise the newest
    position any of its hosts has (every host asked: a demoted site's old primary holds the last
    WAL, its replicas may not yet)."""
    try:
        with psycopg.connect(superuser_dsn(dsn, cfg, "read-write"), autocommit=True) as c:
            return _read(c, True)
    except psycopg.Error:
        pass
    d: dict[str, Any] = dict(conninfo_to_dict(superuser_dsn(dsn, cfg, "any")))
    hosts = str(d.get("host") or "").split(",")
    ports = str(d.get("port") or "5432").split(",")
    ports = ports * len(hosts) if len(ports) == 1 else ports
    best: Remote | None = None
    error = "no host in the DSN"
    for host, port in zip(hosts, ports, strict=False):
        try:
            one = make_conninfo("", **{**d, "host": host, "port": port})
            with psycopg.connect(one, autocommit=True) as c:
                r = _read(c, False)
        except psycopg.Error as e:
            error = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            continue
        if best is None or (r.lsn or 0) > (best.lsn or 0):
            best = r
    return best if best is not None else Remote(False, error=error)


def _read(c: psycopg.Connection[Any], writable: bool) -> Remote:
    q = ("SELECT pg_current_wal_lsn()::text" if writable else
         "SELECT greatest(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::text")
    row = c.execute(q).fetchone()
    sid = c.execute("SELECT system_identifier::text FROM pg_control_system()").fetchone()
    return Remote(True, writable, lsn_to_int(row[0]) if row else None, sid[0] if sid else None,
                  f"{c.info.host}:{c.info.port}")


@dataclass(frozen=True)
class Replay:
    """This site's standby leader: how far it replayed, and the time of the last replayed commit."""

    member: str
    replayed: int | None
    received: int | None
    last_commit: datetime | None


def standby_leader_replay(view: ClusterView, cfg: NodeConfig) -> Replay:
    if view.leader is None or view.leader.name not in view.members:
        raise CliError("this site has no standby leader right now (no leader key); "
                       "try again in a few seconds")
    m = view.members[view.leader.name]
    if m.role != Role.STANDBY_LEADER:
        raise CliError(f"{m.name} leads this site as {m.role.value}, not as a standby leader")
    dsn = make_conninfo(host=m.host, port=str(m.port))
    try:
        with psycopg.connect(superuser_dsn(dsn, cfg), autocommit=True) as c:
            row = c.execute("SELECT pg_last_wal_replay_lsn()::text, pg_last_wal_receive_lsn()::text, "
                            "pg_last_xact_replay_timestamp()").fetchone()
    except psycopg.Error as e:
        raise CliError(f"cannot read the standby leader {m.name}'s position: {e}") from None
    assert row is not None
    return Replay(m.name, lsn_to_int(row[0]), lsn_to_int(row[1]), row[2])


def describe_lag(replay: Replay, source: Remote) -> str:
    when = replay.last_commit.isoformat(timespec="seconds") if replay.last_commit else "none yet"
    text = (f"{replay.member} replayed up to {int_to_lsn(replay.replayed)} (last replayed commit: {when})")
    if source.reachable and source.lsn is not None and replay.replayed is not None:
        behind = max(0, source.lsn - replay.replayed)
        return text + f"; the source site is at {int_to_lsn(source.lsn)}: {behind} bytes behind"
    received = replay.received or 0
    unreplayed = max(0, received - (replay.replayed or 0))
    return text + f"; the source site cannot be reached, so how far it got is unknown ({unreplayed} " \
                  f"bytes received but not yet replayed)"


def read_sites(urls: tuple[str, ...], cfg: NodeConfig) -> tuple[SiteReading, ...]:
    """The other sites' `GET /site`, over https with this node's CA and certificate when
    restapi.tls is set (the agents' probe does the same)."""
    paths = cfg.restapi.client_tls()
    probe = SiteProbe(tls=None if paths is None else ContextSource(paths, client_context))
    try:
        return probe.read(urls, 2.0)
    finally:
        probe.close()
