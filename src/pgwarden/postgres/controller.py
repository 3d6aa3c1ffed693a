"""PostgresController: everything the agent does to its local PostgreSQL (observe, bootstrap,
clone, start/stop, promote/demote, sync, slots, rewind), as the unprivileged OS user.

Files beside the data directory (so a wipe or a clone never touches them, and pg_basebackup
still finds an empty directory): `<data_dir>.log` (the server log, pg_ctl -l),
`<data_dir>.pgpass` (libpq passfile with the replication and superuser passwords, mode 0600) and
`<data_dir>.run/` (the unix socket: pg_rewind chokes on a socket inside the data directory).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import psycopg
from psycopg import sql as pgsql

from pgwarden.config.schema import ClusterSettings, NodeConfig, SyncMode
from pgwarden.core.model import NO_SYNC, DataState, PgView, SyncConfig, lsn_to_int
from pgwarden.postgres import binaries, conf, controldata, osuser, sql, sync_names

log = logging.getLogger("pgwarden.postgres")

Role = Literal["primary", "replica"]
StopMode = Literal["smart", "fast", "immediate"]
UpstreamTuple = tuple[str, str, int]  # (member name, host, port)

# Unix socket paths are limited to ~107 bytes; beyond that we serve TCP only.
_MAX_SOCKET_PATH = 100


class PostgresError(Exception):
    """A PostgreSQL operation failed; the message says which and why (log tail included)."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # Where nothing reaps orphans (containers), a dead postmaster lingers as a zombie.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


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


def _local_host(listen_address: str) -> str:
    first = listen_address.split(",")[0].strip()
    if first in ("*", "0.0.0.0", ""):
        return "127.0.0.1"
    if first == "::":
        return "::1"
    return first


class PostgresController:
    """The only object the agent uses to act on PostgreSQL. Methods raise PostgresError on
    failure, except observe() (never raises) and rewind() (returns False)."""

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
        self.bin_dir = binaries.reachable_bin_dir(binaries.find_bin_dir(pg.bin_dir), self.os_user)
        self.major = binaries.pg_version(self.bin_dir)
        self.data_dir = cfg.data_dir.absolute()
        self.log_file = self.data_dir.with_name(self.data_dir.name + ".log")
        self.passfile = self.data_dir.with_name(self.data_dir.name + ".pgpass")
        run_dir = self.data_dir.with_name(self.data_dir.name + ".run")
        sock = run_dir / f".s.PGSQL.{pg.port}"
        self.socket_dir: Path | None = run_dir if len(str(sock)) <= _MAX_SOCKET_PATH else None
        self._state = self._load_state()
        self._probe_lock = threading.Lock()
        self._probe_thread: threading.Thread | None = None
        # synchronous_standby_names as the server last answered it (the file can be ahead of
        # it after a reload that did not go through) and the LSN when it took effect.
        self._live = sync_names.LiveSyncTracker()
        self._unhealthy_since: float | None = None
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

    def _local_params(self) -> sql.ConnParams:
        pg = self._cfg.postgresql
        # TCP when our socket is absent (a server started with another layout, or TCP-only).
        sock = self.socket_dir / f".s.PGSQL.{pg.port}" if self.socket_dir else None
        host = str(self.socket_dir) if sock and sock.exists() else _local_host(pg.listen_address)
        return sql.ConnParams(host=host, port=pg.port, user=pg.superuser.username,
                              password=pg.superuser.secret())

    @contextmanager
    def _local(self, timeout: float) -> Iterator[psycopg.Connection[Any]]:
        with sql.connect(self._local_params(), timeout) as conn:
            yield conn

    def data_state(self) -> DataState:
        d = self.data_dir
        try:
            if not d.exists() or not any(d.iterdir()):
                return DataState.EMPTY
        except OSError:
            return DataState.BROKEN
        if (d / "PG_VERSION").is_file() and (d / "global" / "pg_control").is_file():
            return DataState.VALID
        return DataState.BROKEN

    def postmaster_pid(self) -> int | None:
        """PID of our running postmaster, None when not running (stale postmaster.pid too)."""
        try:
            first = (self.data_dir / "postmaster.pid").read_text().splitlines()[0]
            pid = int(first.strip())
        except (OSError, ValueError, IndexError):
            return None
        if not _pid_alive(pid):
            return None
        # A reused PID is another process: the postmaster's cwd is its data directory.
        try:
            cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
        except OSError:
            return pid
        return pid if cwd == self.data_dir.resolve() else None

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

    def _render(self, state: conf.ConfState, settings: ClusterSettings) -> str:
        pg = self._cfg.postgresql
        return conf.render_postgresql_conf(
            data_dir=self.data_dir, listen_address=pg.listen_address, port=pg.port,
            member=self._cfg.name, node_parameters=pg.parameters,
            cluster_parameters=settings.parameters, state=state,
            replication_user=pg.replication.username, passfile=self.passfile,
            socket_dir=self.socket_dir, cluster_name=self._cfg.cluster,
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
                         conf.render_pg_hba(superuser=pg.superuser.username, extra=pg.pg_hba),
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
        log.info("wrote config: role=%s upstream=%s sync=%s", state.role,
                 f"{up.member}@{up.host}:{up.port}" if up else None, conf.sync_standby_names(state.sync))

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
                        row = conn.execute(
                            "SELECT coalesce(bool_or(pending_restart), false) FROM pg_settings"
                        ).fetchone()
                        return bool(row and row[0])
            except psycopg.Error as e:
                log.debug("waiting for reload: %s", e)
            if left <= 0:
                raise PostgresError(f"configuration reload not applied within {timeout:g}s")
            time.sleep(0.05)

    def _note_live(self, pid: int | None, conn: psycopg.Connection[Any]) -> SyncConfig:
        live = sql.query_live_sync(conn)
        return self._live.note(pid, live.names, live.in_recovery, live.current_lsn)

    # ---- observation ---------------------------------------------------------------------

    def _probe(self, budget: float) -> sql.Health | None:
        """Health query in a worker thread bounded by `budget` (libpq's connect timeout cannot
        go below 2 s, and a frozen server never answers). At most one probe is in flight."""
        box: dict[str, Any] = {}
        params = self._local_params()

        def work() -> None:
            try:
                with sql.connect(params, max(budget, 0.5)) as conn:
                    health = sql.query_health(conn)
                if health.in_recovery and health.receiver_status != "streaming":
                    tl = sql.replay_timeline(params, max(budget, 0.5))
                    if tl is not None:
                        health = replace(health, timeline=tl)
                box["health"] = health
            except Exception as e:  # reported as unhealthy
                box["error"] = e

        with self._probe_lock:
            prev = self._probe_thread
            if prev is not None and prev.is_alive():
                log.warning("previous health query still has no answer")
                return None
            t = threading.Thread(target=work, name="pgwarden-pg-probe", daemon=True)
            self._probe_thread = t
            t.start()
        t.join(max(budget, 0.0))
        if t.is_alive():
            log.warning("PostgreSQL did not answer the health query within %.2fs", budget)
            return None
        if "error" in box:
            log.info("health query failed: %s", box["error"])
            return None
        h: sql.Health = box["health"]
        return h

    def observe(self, timeout: float) -> PgView:
        """What the local PostgreSQL is doing, within `timeout` seconds. Never raises."""
        started = time.monotonic()
        try:
            return self._observe(timeout, started)
        except Exception:  # the agent must always get a view
            log.exception("observe failed")
            try:
                data = self.data_state()
            except Exception:
                data = DataState.BROKEN
            return PgView(data=data, version=self.major)

    def _observe(self, timeout: float, started: float) -> PgView:
        data = self.data_state()
        if data is not DataState.VALID:
            self._unhealthy_since = None
        st = self._state
        upstream = st.upstream.member if st.role == "replica" and st.upstream else None
        base = PgView(data=data, upstream=upstream, sync=st.sync, version=self.major)
        pid = self.postmaster_pid() if data is DataState.VALID else None
        if pid is None:
            self._unhealthy_since = None
            if data is not DataState.VALID:
                return base
            left = timeout - (time.monotonic() - started)
            try:
                cd = controldata.read_controldata(self.bin_dir, self.data_dir, self.os_user,
                                                  max(left, 0.5))
            except (controldata.ControlDataError, OSError, subprocess.SubprocessError) as e:
                log.warning("cannot read pg_control: %s", e)
                return base
            was_primary = cd.was_primary and not controldata.unstarted_backup(self.data_dir)
            return replace(base, system_id=cd.system_id, timeline=cd.timeline,
                           checkpoint_lsn=_end_lsn(cd), was_primary=was_primary,
                           clean_shutdown=cd.clean_shutdown)
        health = self._probe(timeout - (time.monotonic() - started))
        if health is None:
            now = time.monotonic()
            if self._unhealthy_since is None:
                self._unhealthy_since = now
            known = self._live.known(pid)
            return replace(base, running=True, healthy=False, postmaster_pid=pid,
                           sync=st.sync if known is None else known,
                           unhealthy_for=now - self._unhealthy_since)
        self._unhealthy_since = None
        # What the server waits for, not what we last wrote: a reload may not have gone through.
        live = self._live.note(pid, health.sync_standby_names, health.in_recovery,
                               health.current_lsn)
        return replace(
            base, sync=live, running=True, healthy=True, postmaster_pid=pid,
            in_recovery=health.in_recovery, system_id=health.system_id, timeline=health.timeline,
            lsn=health.lsn, received_lsn=health.received_lsn, replayed_lsn=health.replayed_lsn,
            streaming=health.receiver_status == "streaming",
            replication=health.replication if not health.in_recovery else (),
            pending_restart=health.pending_restart, version=health.version_num // 10000,
            sync_applied_lsn=self._live.applied_lsn,
        )

    # ---- lifecycle -----------------------------------------------------------------------

    def bootstrap(self, timeout: float = 60.0) -> str:
        """initdb a new cluster, start it as primary, create the replication role; return the
        system identifier."""
        if self.data_state() is not DataState.EMPTY:
            raise PostgresError(f"cannot bootstrap: {self.data_dir} is not empty")
        self._ensure_layout()
        osuser.prepare_dir(self.data_dir, self.uid, self.gid)
        pg = self._cfg.postgresql
        pwfile = self.data_dir.with_name(f".{self.data_dir.name}.pwfile")
        osuser.give_file(pwfile, pg.superuser.secret() + "\n", self.uid, self.gid)
        argv = [self._bin("initdb"), "-D", str(self.data_dir), "-U", pg.superuser.username,
                f"--pwfile={pwfile}", "-E", "UTF8", "--no-locale", "--data-checksums",
                "--auth-local=peer", "--auth-host=scram-sha-256"]
        try:
            res = self._run(argv, timeout)
        except subprocess.TimeoutExpired as e:
            self.wipe()
            raise PostgresError(f"initdb did not finish within {timeout:g}s") from e
        finally:
            pwfile.unlink(missing_ok=True)
        if res.returncode != 0:
            self.wipe()
            raise PostgresError(f"initdb failed ({res.returncode}): {res.stderr.strip()}")
        self._write_config(conf.initial_state("primary"))
        self.start(role="primary", upstream=None, wait_timeout=timeout)
        self._ensure_replication_role(timeout)
        cd = controldata.read_controldata(self.bin_dir, self.data_dir, self.os_user, timeout)
        log.info("bootstrapped cluster, system id %s", cd.system_id)
        return cd.system_id

    def _ensure_replication_role(self, timeout: float) -> None:
        rep = self._cfg.postgresql.replication
        if rep.username == self._cfg.postgresql.superuser.username:
            return
        with self._local(timeout) as conn:
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s",
                                  (rep.username,)).fetchone()
            verb = "ALTER" if exists else "CREATE"
            log.info("%s ROLE %s WITH REPLICATION LOGIN PASSWORD '***'", verb, rep.username)
            conn.execute(pgsql.SQL("{} ROLE {} WITH REPLICATION LOGIN PASSWORD {}").format(
                pgsql.SQL(verb), pgsql.Identifier(rep.username), pgsql.Literal(rep.secret())))

    def clone(self, source_host: str, source_port: int, timeout: float) -> None:
        """Replace the data directory with a base backup of source; leave it configured as a
        replica (without upstream until start() names one)."""
        if self.postmaster_pid() is not None:
            raise PostgresError("cannot clone while PostgreSQL is running")
        self.wipe()
        self._ensure_layout()
        osuser.prepare_dir(self.data_dir, self.uid, self.gid)
        rep = self._cfg.postgresql.replication
        argv = [self._bin("pg_basebackup"), "-D", str(self.data_dir), "-h", source_host,
                "-p", str(source_port), "-U", rep.username, "-X", "stream",
                "--checkpoint=fast", "--no-password"]
        env = {"PGPASSFILE": str(self.passfile), "PGCONNECT_TIMEOUT": "5",
               "PGAPPNAME": f"pgwarden-clone-{self._cfg.name}"}
        try:
            res = self._run(argv, timeout, env=env)
        except subprocess.TimeoutExpired as e:
            self.wipe()
            raise PostgresError(f"pg_basebackup from {source_host}:{source_port} timed out "
                                f"after {timeout:g}s") from e
        if res.returncode != 0:
            self.wipe()
            raise PostgresError(f"pg_basebackup from {source_host}:{source_port} failed "
                                f"({res.returncode}): {res.stderr.strip()}")
        for leftover in ("postmaster.pid", "postmaster.opts"):
            (self.data_dir / leftover).unlink(missing_ok=True)
        self._write_config(conf.ConfState("replica", None, self._state.sync, ""))
        log.info("cloned %s from %s:%d", self.data_dir, source_host, source_port)

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
        raise PostgresError(f"PostgreSQL did not start: {out}\n{_tail(self.log_file)}")

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

    def promote(self, timeout: float) -> None:
        """Promote the running standby and wait until it accepts writes.

        The new primary's synchronous setting (_sync_after_promotion) is reloaded while it is
        still a standby (the server accepts it in recovery and enforces it the moment recovery
        ends), so it holds from the first commit. standby.signal stays until pg_promote removes
        it: a crash before the promotion must bring the server back as a standby.
        """
        deadline = time.monotonic() + timeout
        sync_after = self._sync_after_promotion()
        try:
            with self._local(timeout) as conn:
                standby = sql.query_live_sync(conn).in_recovery
        except psycopg.Error as e:
            raise PostgresError(f"cannot set the synchronous setting before promoting: {e}") from e
        if standby:
            self._write_config(conf.ConfState("replica", self._state.upstream, sync_after, ""))
            self._reload_and_wait(max(1.0, deadline - time.monotonic()))
        left = max(1.0, deadline - time.monotonic())
        wait_s = max(1, int(left))
        ok = False
        try:
            with self._local(left + 1) as conn:
                log.info("SELECT pg_promote(wait => true, wait_seconds => %d)", wait_s)
                row = conn.execute("SELECT pg_promote(wait => true, wait_seconds => %s)",
                                   (wait_s,)).fetchone()
                ok = bool(row and row[0])
        except psycopg.Error as e:
            log.warning("pg_promote failed: %s; falling back to pg_ctl promote", e)
        if not ok:
            left = max(1.0, deadline - time.monotonic())
            res = self._run([self._bin("pg_ctl"), "promote", "-D", str(self.data_dir), "-w",
                             "-t", str(max(1, int(left)))], left + 2)
            if res.returncode != 0:
                raise PostgresError(f"pg_ctl promote failed: {(res.stdout + res.stderr).strip()}")
        while True:
            try:
                with self._local(max(0.5, deadline - time.monotonic())) as conn:
                    row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
                    if row is not None and not row[0]:
                        break
            except psycopg.Error as e:
                log.debug("waiting for promotion: %s", e)
            if time.monotonic() > deadline:
                raise PostgresError(f"still in recovery {timeout:g}s after promote")
            time.sleep(0.05)
        self._write_config(conf.ConfState("primary", None, sync_after, ""))
        self._reload_and_wait(max(1.0, deadline - time.monotonic()))

    def _sync_after_promotion(self) -> SyncConfig:
        """What a new primary waits for before its HA loop manages synchronous replication.

        Never the set it may have carried from an earlier term as primary: that can name the
        dead old primary and block every commit. Strict mode waits for any standby (rule 8);
        otherwise nothing, which is safe because the store's promise still names only members
        that hold every acknowledged commit, and the leader's loop rebuilds the set in order.
        """
        s = self._settings_provider()
        if s.synchronous_mode != SyncMode.OFF and s.synchronous_mode_strict:
            return SyncConfig(1, frozenset({"*"}))
        return NO_SYNC

    def demote(self, upstream: UpstreamTuple | None, timeout: float) -> None:
        """Fast stop (writes end for every session), then start as a standby of `upstream`."""
        deadline = time.monotonic() + timeout
        self.stop("fast", timeout / 2)
        self.start(role="replica", upstream=upstream,
                   wait_timeout=max(1.0, deadline - time.monotonic()))

    def reconfigure(self, upstream: UpstreamTuple | None, sync: SyncConfig,
                    settings: ClusterSettings, timeout: float = 5.0) -> bool:
        """Rewrite the config (upstream, sync, parameters) and reload when running; return
        whether some changed parameter needs a restart (primary_conninfo does not, PG >= 13)."""
        role: Role = "replica" if self._state.role == "replica" else "primary"
        up = conf.Upstream(*upstream) if role == "replica" and upstream else None
        state = conf.ConfState(role, up, sync, self._state.generation)
        running = self.postmaster_pid() is not None
        if self._config_unchanged(state, settings) and (not running or self._runs_our_file(timeout)):
            return running and self._pending_restart
        self._write_config(state, settings)
        if not running:
            return False
        self._pending_restart = self._reload_and_wait(timeout)
        return self._pending_restart

    def _runs_our_file(self, timeout: float) -> bool:
        """Does the server run the config file we last wrote (a reload may have failed)?"""
        try:
            with self._local(timeout) as conn:
                return sql.current_generation(conn) == self._state.generation
        except psycopg.Error as e:
            log.debug("cannot read the running configuration's generation: %s", e)
            return False

    def set_sync(self, sync: SyncConfig, timeout: float = 5.0) -> None:
        """Make synchronous_standby_names enforce `sync`; returns once the server runs it, and
        records the primary's LSN at that moment (PgView.sync_applied_lsn). Skips the reload
        only when the server, asked now, already runs `sync` and the file says so too: after a
        reload that did not go through, the file is ahead of the server."""
        deadline = time.monotonic() + timeout
        state = replace(self._state, sync=sync)
        pid = self.postmaster_pid()
        if pid is None:
            self._write_config(state)
            return
        try:
            with self._local(timeout) as conn:
                live = self._note_live(pid, conn)
        except psycopg.Error as e:
            raise PostgresError(f"cannot read synchronous_standby_names: {e}") from e
        if live == sync and self._config_unchanged(state, None):
            return  # already enforced since PgView.sync_applied_lsn
        self._write_config(state)
        self._reload_and_wait(max(0.5, deadline - time.monotonic()))
        if self._live.sync != sync:
            raise PostgresError(
                f"synchronous_standby_names is {self._live.names!r} after the reload, not "
                f"{conf.sync_standby_names(sync)!r} (overridden in postgresql.auto.conf?)")

    def ensure_slots(self, names: set[str], timeout: float = 5.0) -> None:
        """On the primary: a physical slot for each member in `names` (member or slot names;
        slot_name() is idempotent); inactive physical slots not wanted are dropped."""
        wanted = {conf.slot_name(n) for n in names}
        with self._local(timeout) as conn:
            rows = conn.execute(
                "SELECT slot_name, active FROM pg_replication_slots "
                "WHERE slot_type = 'physical' AND NOT temporary"
            ).fetchall()
            have = {str(r[0]): bool(r[1]) for r in rows}
            for name in sorted(wanted - set(have)):
                log.info("creating replication slot %s", name)
                conn.execute("SELECT pg_create_physical_replication_slot(%s, true)", (name,))
            for name, active in sorted(have.items()):
                if name in wanted or active:
                    continue
                log.info("dropping replication slot %s", name)
                try:
                    conn.execute("SELECT pg_drop_replication_slot(%s)", (name,))
                except psycopg.Error as e:  # it may have become active meanwhile
                    log.warning("cannot drop slot %s: %s", name, e)

    def rewind(self, source_host: str, source_port: int, timeout: float) -> bool:
        """pg_rewind this (stopped) data directory onto source's timeline; True on success.
        Afterwards start(role="replica", ...) it."""
        deadline = time.monotonic() + timeout
        if self.postmaster_pid() is not None:
            self.stop("fast", timeout / 3)
        self._ensure_layout()
        pg = self._cfg.postgresql
        src = sql.ConnParams(host=source_host, port=source_port, user=pg.superuser.username,
                             password=pg.superuser.secret())
        # A freshly promoted source keeps the old timeline in pg_control until its first
        # checkpoint, and pg_rewind would then see nothing to rewind.
        try:
            with sql.connect(src, min(5.0, timeout / 3)) as conn:
                row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
                if row is not None and not row[0]:
                    log.info("CHECKPOINT on rewind source %s:%d", source_host, source_port)
                    conn.execute("CHECKPOINT")
        except psycopg.Error as e:
            log.warning("cannot checkpoint rewind source %s:%d: %s", source_host, source_port, e)
        source_server = " ".join([
            f"host={source_host}", f"port={source_port}", f"user={pg.superuser.username}",
            "dbname=postgres", "connect_timeout=5", f"passfile={self.passfile}",
        ])
        argv = [self._bin("pg_rewind"), "-D", str(self.data_dir), f"--source-server={source_server}"]
        try:
            res = self._run(argv, max(1.0, deadline - time.monotonic()),
                            env={"PGPASSFILE": str(self.passfile)})
        except subprocess.TimeoutExpired:
            log.error("pg_rewind timed out after %gs", timeout)
            return False
        output = (res.stdout + res.stderr).strip()
        if res.returncode != 0:
            log.error("pg_rewind failed (%d): %s", res.returncode, output)
            return False
        log.info("pg_rewind: %s", output)
        # pg_rewind copied the source's postgresql.conf/pg_hba.conf over ours.
        self._write_config(conf.ConfState("replica", self._state.upstream, self._state.sync, ""))
        return True

    def read_timeline_history(self, timeline: int) -> list[tuple[int, int, str]]:
        """(timeline, switch LSN, reason) rows of pg_wal/<timeline>.history; [] when absent."""
        path = self.data_dir / "pg_wal" / f"{timeline:08X}.history"
        try:
            text = path.read_text()
        except OSError:
            return []
        return parse_history(text)

    def checkpoint(self, timeout: float = 30.0) -> None:
        with self._local(timeout) as conn:
            log.info("CHECKPOINT")
            conn.execute("CHECKPOINT")

    def wipe(self) -> None:
        """Remove the data directory (PostgreSQL must be stopped)."""
        if self.postmaster_pid() is not None:
            raise PostgresError("refusing to wipe the data directory of a running PostgreSQL")
        d = self.data_dir
        if len(d.resolve().parts) < 3:
            raise PostgresError(f"refusing to wipe {d}: too close to /")
        if d.exists():
            log.warning("wiping %s", d)
            shutil.rmtree(d)
        self._state = conf.ConfState("primary", None, self._state.sync, "")

    def log_tail(self, lines: int = 20) -> str:
        return _tail(self.log_file, lines)

    def fresh_health(self, timeout: float) -> sql.Health:
        """The health query now, on a connection of its own: a peer deciding a promotion needs
        our position as it is, not as our last loop saw it (rule 7)."""
        with sql.connect(self._local_params(), timeout) as conn:
            return sql.query_health(conn)


def _end_lsn(cd: controldata.ControlData) -> int | None:
    """How far the stopped data directory is known to reach: a standby's minimum recovery end
    can be well past its last restartpoint, and a fork check must not miss that WAL."""
    known = [x for x in (cd.checkpoint_lsn, cd.min_recovery_end_lsn) if x]
    return max(known) if known else None


def parse_history(text: str) -> list[tuple[int, int, str]]:
    rows: list[tuple[int, int, str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 2)
        if len(parts) < 2:
            continue
        lsn = lsn_to_int(parts[1])
        if lsn is None:
            continue
        rows.append((int(parts[0]), lsn, parts[2] if len(parts) > 2 else ""))
    return rows
