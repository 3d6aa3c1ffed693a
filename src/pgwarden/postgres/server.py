"""PostgresServer: one PostgreSQL data directory and its postmaster, as the unprivileged OS user:
paths, the configuration files pgwarden writes (and reloading them), starting and stopping.

Files beside the data directory (so a wipe or a clone never touches them, and pg_basebackup
still finds an empty directory): `<data_dir>.log` (the server log, pg_ctl -l),
`<data_dir>.pgpass` (libpq passfile with the replication and superuser passwords, mode 0600) and
`<data_dir>.run/` (the unix socket: pg_rewind chokes on a socket inside the data directory) and,
with postgresql.tls, `<data_dir>.tls/` (the certificate, key and CA as PostgreSQL reads them; see
postgres/tls.py).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import psycopg

from pgwarden.config.schema import ClusterSettings, NodeConfig
from pgwarden.core.model import DataState, SyncConfig
from pgwarden.postgres import binaries, conf, controldata, datadir_state, osuser, sql, sync_names
from pgwarden.postgres import tls as pgtls
from pgwarden.postgres.health_conn import HealthConnection
from pgwarden.postgres.probe_worker import ProbeWorker
from pgwarden.postgres.startlog import startup_failure
from pgwarden.procinfo import pid_alive as _pid_alive

log = logging.getLogger("pgwarden.postgres")

Role = Literal["primary", "replica"]
StopMode = Literal["smart", "fast", "immediate"]
# (member name, host, port), or with a standby site's source (..., DSN, slot or None)
UpstreamTuple = tuple[str, str, int] | tuple[str, str, int, str, str | None]

# Unix socket paths are limited to ~107 bytes; beyond that we serve TCP only.
_MAX_SOCKET_PATH = 100


class PostgresError(Exception):
    """A PostgreSQL operation failed; the message says which and why (log tail included)."""


class StartError(PostgresError):
    """pg_ctl start failed; the message carries PostgreSQL's own reason (its FATAL line)."""


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if len(fields) > 1 and fields[1] == str(pid):
            kids.append(int(entry.name))
    return kids


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def socket_dir_for(cfg: NodeConfig) -> Path | None:
    """Where the node's PostgreSQL puts its Unix socket (beside the data directory), None when
    that path would be too long for a socket."""
    data_dir = cfg.data_dir.absolute()
    run_dir = data_dir.with_name(data_dir.name + ".run")
    sock = run_dir / f".s.PGSQL.{cfg.postgresql.port}"
    return run_dir if len(str(sock)) <= _MAX_SOCKET_PATH else None


def local_conn_host(cfg: NodeConfig, socket_dir: Path | None) -> str:
    """Where this host reaches the node's server: the socket directory when the socket is there,
    else the listen address over TCP (a server started with another layout, or TCP-only). One
    stat in os calls (pathlib's answers, error for error): the agent asks every loop (issue 16)."""
    pg = cfg.postgresql
    sock_dir = str(socket_dir) if socket_dir else None
    if sock_dir is not None and datadir_state.exists(f"{sock_dir}/.s.PGSQL.{pg.port}"):
        return sock_dir
    return local_host(pg.listen_address)


def local_conn_params(cfg: NodeConfig, socket_dir: Path | None) -> sql.ConnParams:
    """How this host reaches the node's server as the superuser."""
    pg = cfg.postgresql
    return sql.ConnParams(host=local_conn_host(cfg, socket_dir), port=pg.port,
                          user=pg.superuser.username, password=pg.superuser.secret())


def local_host(listen_address: str) -> str:
    first = listen_address.split(",")[0].strip()
    if first in ("*", "0.0.0.0", ""):
        return "127.0.0.1"
    if first == "::":
        return "::1"
    return first


class PostgresServer:
    """The data directory, its configuration and its postmaster's lifecycle. Methods raise
    PostgresError on failure."""

    def __init__(self, cfg: NodeConfig, settings_provider: Callable[[], ClusterSettings]) -> None:
        self._cfg = cfg
        self._settings_provider = settings_provider
        pg = cfg.postgresql
        if osuser.is_root():
            self.uid, self.gid = osuser.ensure_os_user(pg.os_user)
            self.os_user = pg.os_user
        else:
            me = osuser.current_user()
            self.uid, self.gid, self.os_user = me.uid, me.gid, me.name
        found = binaries.find_bin_dir(pg.bin_dir, need_ssl=pg.tls is not None)
        self.bin_dir = binaries.reachable_bin_dir(found, self.os_user)
        self.major = binaries.pg_version(self.bin_dir)
        self.data_dir = cfg.data_dir.absolute()
        self.log_file = self.data_dir.with_name(self.data_dir.name + ".log")
        self.passfile = self.data_dir.with_name(self.data_dir.name + ".pgpass")
        self.socket_dir: Path | None = socket_dir_for(cfg)
        self.tls = None if pg.tls is None else pgtls.installed(pg.tls, self.data_dir)
        self._state = self._load_state()
        # The health query's kept thread; the kept connection is used by that thread only.
        self._prober: ProbeWorker[sql.Health] = ProbeWorker("pgwarden-pg-probe")
        self._health = HealthConnection()
        self._params: tuple[tuple[str, int, str, str], sql.ConnParams] | None = None  # local_params
        # synchronous_standby_names as the server last answered it (the file can be ahead of
        # it after a reload that did not go through) and the LSN when it took effect.
        self._live = sync_names.LiveSyncTracker()
        self._pending_restart = False
        log.info("postgres %d binaries in %s, data in %s, OS user %s",
                 self.major, self.bin_dir, self.data_dir, self.os_user)

    # ---- small helpers -------------------------------------------------------------------

    def _bin(self, name: str) -> str:
        return str(self.bin_dir / name)

    def _run(self, argv: list[str], timeout: float, env: dict[str, str] | None = None
             ) -> subprocess.CompletedProcess[str]:
        return osuser.run_as(self.os_user, argv, timeout=max(1.0, timeout), env=env)

    def _load_state(self) -> conf.ConfState:
        try:
            text = (self.data_dir / "postgresql.conf").read_text()
        except OSError:
            return conf.initial_state()
        return conf.read_state(text) or conf.initial_state("primary")

    def local_params(self) -> sql.ConnParams:
        pg = self._cfg.postgresql
        # Called every loop: the parameters are built again only when what they are made of
        # changed (issue 16).
        key = (local_conn_host(self._cfg, self.socket_dir), pg.port, pg.superuser.username,
               pg.superuser.secret())
        if self._params is None or self._params[0] != key:
            self._params = (key, sql.ConnParams(host=key[0], port=key[1], user=key[2], password=key[3]))
        return self._params[1]

    @contextmanager
    def _local(self, timeout: float) -> Iterator[psycopg.Connection[Any]]:
        with sql.connect(self.local_params(), timeout) as conn:
            yield conn

    def data_state(self) -> DataState:
        return datadir_state.data_state(str(self.data_dir))

    def postmaster_pid(self) -> int | None:
        """PID of our running postmaster, None when not running (stale postmaster.pid too)."""
        return datadir_state.postmaster_pid(str(self.data_dir))

    def _remove_stale_pidfile(self) -> None:
        """Drop a postmaster.pid whose process is gone. A SIGKILLed postmaster leaves it behind
        and, until init reaps the zombie, PostgreSQL would take the PID for a live postmaster."""
        pidfile = self.data_dir / "postmaster.pid"
        if pidfile.exists() and self.postmaster_pid() is None:
            log.warning("removing stale %s", pidfile)
            pidfile.unlink(missing_ok=True)
        if self.socket_dir is None:
            return
        # The socket's lock file in our own socket dir has the same problem.
        sock = self.socket_dir / f".s.PGSQL.{self._cfg.postgresql.port}"
        lock = sock.with_name(sock.name + ".lock")
        try:
            owner = int(lock.read_text().splitlines()[0].strip())
        except (OSError, ValueError, IndexError):
            return
        if not _pid_alive(owner):
            log.warning("removing stale %s", lock)
            lock.unlink(missing_ok=True)
            sock.unlink(missing_ok=True)

    def _ensure_layout(self) -> None:
        """The parent dir, log file and passfile, all usable by the OS user."""
        parent = self.data_dir.parent
        parent.mkdir(parents=True, exist_ok=True)
        blocked = osuser.first_blocked_dir(parent, self.uid, osuser.group_ids(self.os_user))
        if blocked is not None:
            raise PostgresError(
                f"OS user {self.os_user} cannot reach {parent}: {blocked} is not traversable "
                f"(chmod o+x it or move data_dir)"
            )
        if self.socket_dir is not None:
            osuser.prepare_dir(self.socket_dir, self.uid, self.gid, 0o700)
        if not self.log_file.exists():
            osuser.give_file(self.log_file, "", self.uid, self.gid, 0o600)
        pg = self._cfg.postgresql
        entries = [(pg.replication.username, pg.replication.secret()),
                   (pg.superuser.username, pg.superuser.secret())]
        osuser.give_file(self.passfile, conf.render_passfile(entries), self.uid, self.gid, 0o600)
        if pg.tls is not None:
            pgtls.install(pg.tls, self.data_dir, self.uid, self.gid)

    def peer_ssl(self) -> dict[str, str]:
        """libpq options for connections to other members (none without postgresql.tls)."""
        return {} if self.tls is None else pgtls.client_options(self.tls.ca)

    def refresh_tls(self, timeout: float) -> None:
        """Install changed certificate files (rotation) and reload a running server to use them."""
        pg = self._cfg.postgresql
        if pg.tls is None or not self.data_dir.parent.exists():
            return
        try:
            changed = pgtls.install(pg.tls, self.data_dir, self.uid, self.gid)
        except OSError as e:
            log.warning("cannot install PostgreSQL's TLS files: %s", e)
            return
        if changed and self.postmaster_pid() is not None:
            log.info("PostgreSQL's TLS files changed: reloading")
            try:
                with self._local(timeout) as conn:
                    conn.execute("SELECT pg_reload_conf()")
            except psycopg.Error as e:
                log.warning("reload for the new TLS files failed: %s", e)

    def _render(self, state: conf.ConfState, settings: ClusterSettings) -> str:
        pg = self._cfg.postgresql
        return conf.render_postgresql_conf(
            data_dir=self.data_dir, listen_address=pg.listen_address, port=pg.port,
            member=self._cfg.name, node_parameters=pg.parameters,
            cluster_parameters=settings.parameters, state=state,
            replication_user=pg.replication.username, passfile=self.passfile,
            socket_dir=self.socket_dir, cluster_name=self._cfg.cluster, major=self.major,
            ssl_parameters=None if self.tls is None else pgtls.server_parameters(self.tls),
            upstream_ssl=self.peer_ssl(),
        )

    def _config_unchanged(self, state: conf.ConfState, settings: ClusterSettings | None) -> bool:
        """Whether writing `state` would change nothing (so no reload is needed)."""
        if settings is None:
            settings = self._settings_provider()
        same = replace(state, generation=self._state.generation)
        try:
            current = (self.data_dir / "postgresql.conf").read_text()
        except OSError:
            return False
        return current == self._render(same, settings)

    def _write_config(self, state: conf.ConfState, settings: ClusterSettings | None = None) -> None:
        pg = self._cfg.postgresql
        if settings is None:
            settings = self._settings_provider()
        state = replace(state, generation=str(time.time_ns()))
        ignored = conf.ignored_parameters(pg.parameters, settings.parameters)
        if ignored:
            log.warning("ignoring parameters pgwarden controls: %s", ", ".join(sorted(ignored)))
        text = self._render(state, settings)
        d = self.data_dir
        osuser.give_file(d / "postgresql.conf", text, self.uid, self.gid)
        osuser.give_file(d / "pg_hba.conf",
                         conf.render_pg_hba(superuser=pg.superuser.username, extra=pg.pg_hba,
                                            ssl=self.tls is not None),
                         self.uid, self.gid)
        idents = {self.os_user, osuser.current_user().name}
        osuser.give_file(d / "pg_ident.conf",
                         conf.render_pg_ident(os_users=idents, superuser=pg.superuser.username),
                         self.uid, self.gid)
        signal_file = d / "standby.signal"
        if state.role == "replica":
            if not signal_file.exists():
                osuser.give_file(signal_file, "", self.uid, self.gid)
        else:
            signal_file.unlink(missing_ok=True)
        self._state = state
        up = state.upstream
        where = None if up is None else f"{up.member} ({up.dsn})" if up.dsn else \
            f"{up.member}@{up.host}:{up.port}"
        log.info("wrote config: role=%s upstream=%s sync=%s", state.role, where,
                 conf.sync_standby_names(state.sync))

    def _reload_and_wait(self, timeout: float) -> bool:
        """Reload and wait until the postmaster runs the config we wrote; return pending_restart.
        Notes the sync setting the server then runs (self._live)."""
        deadline = time.monotonic() + timeout
        pid = self.postmaster_pid()
        self._live.reloading(self._state.sync)
        try:
            with self._local(timeout) as conn:
                conn.execute("SELECT pg_reload_conf()")
        except psycopg.Error as e:
            raise PostgresError(f"configuration reload failed: {e}") from e
        want = self._state.generation
        while True:
            left = deadline - time.monotonic()
            try:
                with self._local(max(left, 0.5)) as conn:
                    if sql.current_generation(conn) == want:
                        self._note_live(pid, conn)
                        row = conn.execute(sql.PENDING_RESTART).fetchone()
                        return bool(row and row[0])
            except psycopg.Error as e:
                log.debug("waiting for reload: %s", e)
            if left <= 0:
                raise PostgresError(f"configuration reload not applied within {timeout:g}s")
            time.sleep(0.05)

    def _note_live(self, pid: int | None, conn: psycopg.Connection[Any]) -> SyncConfig:
        live = sql.query_live_sync(conn)
        return self._live.note(pid, live.names, live.in_recovery, live.current_lsn)

    def start(self, *, role: Role, upstream: UpstreamTuple | None, wait_timeout: float) -> None:
        """Write our config for `role` and start the postmaster. A replica with upstream None is
        a read-only standby that follows nobody. Returns once accepting connections, or when a
        standby is still catching up at `wait_timeout` (check observe())."""
        if self.postmaster_pid() is not None:
            log.info("start: PostgreSQL already running")
            return
        if self.data_state() is not DataState.VALID:
            raise PostgresError(f"cannot start: {self.data_dir} holds no valid data directory")
        if role == "primary":
            # Rule 4: a standby's data directory becomes a primary only by promotion.
            refusal = controldata.primary_start_refusal(self.bin_dir, self.data_dir, self.os_user,
                                                        max(1.0, min(wait_timeout, 30.0)))
            if refusal is not None:
                raise PostgresError(f"refusing to start {self.data_dir} as a primary: {refusal}")
        self._ensure_layout()
        self._remove_stale_pidfile()
        up = conf.Upstream(*upstream) if role == "replica" and upstream else None
        self._write_config(conf.ConfState(role, up, self._state.sync, ""))
        self._live.forget()
        argv = [self._bin("pg_ctl"), "start", "-D", str(self.data_dir), "-w",
                "-t", str(max(1, int(wait_timeout))), "-l", str(self.log_file)]
        try:
            res = self._run(argv, wait_timeout + 5)
        except subprocess.TimeoutExpired:
            res = None
        if res is not None and res.returncode == 0:
            return
        if self.postmaster_pid() is not None:
            log.warning("postmaster running but not ready after %gs (still recovering?)", wait_timeout)
            return
        out = "" if res is None else (res.stdout + res.stderr).strip()
        tail = _tail(self.log_file)
        log.debug("pg_ctl start failed: %s\n%s", out, tail)
        why = startup_failure(tail) or " ".join(out.split()) or "pg_ctl start timed out"
        raise StartError(f"PostgreSQL did not start: {why} (see {self.log_file})")

    def stop(self, mode: StopMode, timeout: float) -> None:
        """Stop in `mode`; past its share of `timeout` escalate to immediate, then SIGKILL the
        postmaster and its children. pg_ctl waits in whole seconds, so allow ~1-2 s extra."""
        pid = self.postmaster_pid()
        if pid is None:
            self._remove_stale_pidfile()
            return
        deadline = time.monotonic() + timeout
        first = timeout if mode == "immediate" else timeout * 0.6
        if not self._pg_ctl_stop(mode, first) and _pid_alive(pid) and mode != "immediate":
            log.warning("%s stop did not finish in %.1fs; escalating to immediate", mode, first)
            self._pg_ctl_stop("immediate", deadline - time.monotonic())
        if _pid_alive(pid):
            self._kill_tree(pid)
        if time.monotonic() > deadline + 2:
            log.warning("stop took longer than %gs", timeout)

    def _pg_ctl_stop(self, mode: StopMode, budget: float) -> bool:
        wait_s = max(1, int(budget + 0.5))
        argv = [self._bin("pg_ctl"), "stop", "-D", str(self.data_dir), "-m", mode, "-w",
                "-t", str(wait_s)]
        try:
            return self._run(argv, wait_s + 2).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def _kill_tree(self, pid: int) -> None:
        kids = _children(pid)
        log.warning("SIGKILL postmaster %d and its children %s", pid, kids)
        for p in [pid, *kids]:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        end = time.monotonic() + 10
        while time.monotonic() < end and any(_pid_alive(p) for p in [pid, *kids]):
            time.sleep(0.02)
        if _pid_alive(pid):
            raise PostgresError(f"postmaster {pid} survived SIGKILL")
        self._remove_stale_pidfile()
