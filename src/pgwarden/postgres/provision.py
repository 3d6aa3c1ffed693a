"""DataDirectory: making and remaking a data directory: initdb (bootstrap), pg_basebackup (clone),
pg_rewind, wiping, and reading its timeline history."""

from __future__ import annotations

import logging
import shutil
import subprocess
import time

import psycopg
from psycopg import sql as pgsql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgwarden.core.model import DataState, lsn_to_int
from pgwarden.postgres import conf, controldata, osuser, sql
from pgwarden.postgres.basebackup_output import Progress, ProgressReader, strip_progress
from pgwarden.postgres.server import PostgresError, PostgresServer

log = logging.getLogger("pgwarden.postgres")


class DataDirectory(PostgresServer):
    """Provisioning on top of the server's lifecycle."""

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

    def clone(self, source_host: str, source_port: int, timeout: float, dsn: str = "",
              progress: Progress | None = None) -> None:
        """Replace the data directory with a base backup of source (or of the server `dsn`
        reaches: a standby site's source); leave it configured as a replica (without upstream
        until start() names one). With `progress`, pg_basebackup runs with --progress and
        `progress(done_bytes, total_bytes)` is called as it copies."""
        if self.postmaster_pid() is not None:
            raise PostgresError("cannot clone while PostgreSQL is running")
        self.wipe()
        self._ensure_layout()
        osuser.prepare_dir(self.data_dir, self.uid, self.gid)
        rep = self._cfg.postgresql.replication
        what = dsn or f"{source_host}:{source_port}"
        where = ["-d", conf.harden_dsn(dsn, self.major)] if dsn else \
            ["-h", source_host, "-p", str(source_port)]
        argv = [self._bin("pg_basebackup"), "-D", str(self.data_dir), *where, "-U", rep.username,
                "-X", "stream", "--checkpoint=fast", "--no-password"]
        env = {"PGPASSFILE": str(self.passfile), "PGCONNECT_TIMEOUT": "5",
               "PGAPPNAME": f"pgwarden-clone-{self._cfg.name}",
               **{f"PG{k.upper()}": v for k, v in self.peer_ssl().items()}}  # PGSSLMODE, PGSSLROOTCERT
        try:
            if progress is None:
                res = self._run(argv, timeout, env=env)
            else:
                reader = ProgressReader(progress)
                res = osuser.run_as_reading_stderr(self.os_user, [*argv, "--progress"], max(1.0, timeout),
                                                   reader.feed, env=env)
                reader.close()
        except subprocess.TimeoutExpired as e:
            self.wipe()
            raise PostgresError(f"pg_basebackup from {what} timed out "
                                f"after {timeout:g}s") from e
        if res.returncode != 0:
            self.wipe()
            raise PostgresError(f"pg_basebackup from {what} failed "
                                f"({res.returncode}): {strip_progress(res.stderr)}")
        for leftover in ("postmaster.pid", "postmaster.opts"):
            (self.data_dir / leftover).unlink(missing_ok=True)
        self._write_config(conf.ConfState("replica", None, self._state.sync, ""))
        log.info("cloned %s from %s", self.data_dir, what)

    def system_id(self, timeout: float = 30.0) -> str:
        """The (stopped or running) data directory's system identifier, from pg_control."""
        return controldata.read_controldata(self.bin_dir, self.data_dir, self.os_user, timeout).system_id

    def rewind(self, source_host: str, source_port: int, timeout: float, dsn: str = "") -> bool:
        """pg_rewind this (stopped) data directory onto source's timeline (or that of the server
        `dsn` reaches: a standby site's source); True on success. Afterwards start(role="replica",
        ...) it."""
        deadline = time.monotonic() + timeout
        if self.postmaster_pid() is not None:
            self.stop("fast", timeout / 3)
        self._ensure_layout()
        pg = self._cfg.postgresql
        src = sql.ConnParams(host=source_host, port=source_port, user=pg.superuser.username,
                             password=pg.superuser.secret(), ssl=tuple(self.peer_ssl().items()))
        # A freshly promoted source keeps the old timeline in pg_control until its first
        # checkpoint, and pg_rewind would then see nothing to rewind.
        what = dsn or f"{source_host}:{source_port}"
        conninfo = ""
        if dsn:
            given = conninfo_to_dict(conf.harden_dsn(dsn, self.major))
            given.update(user=pg.superuser.username, connect_timeout="5", passfile=str(self.passfile))
            given.setdefault("dbname", "postgres")
            if "sslmode" not in given:  # as primary_conninfo: the DSN's TLS settings, else ours
                given.update(self.peer_ssl())
            conninfo = make_conninfo(**{k: str(v) for k, v in given.items() if v is not None})
        try:
            opened = psycopg.connect(conninfo, autocommit=True, password=pg.superuser.secret()) if dsn else \
                sql.connect(src, min(5.0, timeout / 3))
            with opened as conn:
                row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
                if row is not None and not row[0]:
                    log.info("CHECKPOINT on rewind source %s", what)
                    conn.execute("CHECKPOINT")
        except psycopg.Error as e:
            log.warning("cannot checkpoint rewind source %s: %s", what, e)
        source_server = conninfo or " ".join([
            f"host={source_host}", f"port={source_port}", f"user={pg.superuser.username}",
            "dbname=postgres", "connect_timeout=5", f"passfile={self.passfile}",
            *(f"{k}={v}" for k, v in self.peer_ssl().items()),
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
