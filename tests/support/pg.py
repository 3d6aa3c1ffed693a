"""PostgreSQL helpers for tests: node configs with data dirs the OS user can reach, and
controllers that are always stopped (by PID, through pg_ctl or SIGKILL) at teardown.

Data dirs live under /tmp/pgwarden-tests/<pid>-<hash of tmp_path>/, not under pytest's tmp_path:
every pytest session (other sessions run beside ours) resets /tmp/pytest-of-root to 0700, which
would lock the PostgreSQL user out mid-test. They are removed when this process exits; leftovers
of dead test processes are swept on the next run.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgwarden.config.schema import ClusterSettings, NodeConfig
from pgwarden.config.validate import validate
from pgwarden.postgres import osuser
from pgwarden.postgres.controller import PostgresController
from tests.support.ports import free_port

# Tests that run PostgreSQL need root (to run it as the `postgres` OS user) and that user.
NEEDS_POSTGRES = pytest.mark.skipif(not osuser.is_root() or osuser.lookup("postgres") is None,
                                    reason="needs root and a postgres OS user")

SUPERUSER = "postgres"
SUPERPASS = "test-super-pw"
REPLUSER = "replicator"
REPLPASS = "test-repl-pw"


def make_traversable(path: Path) -> None:
    """Give 'others' search (x) permission on `path` and its ancestors, so the unprivileged
    PostgreSQL user can reach data dirs under pytest's 0700 tmp root. Listing stays denied."""
    path.mkdir(parents=True, exist_ok=True)
    for p in (path, *path.parents):
        mode = p.stat().st_mode
        if not mode & 0o001:
            os.chmod(p, mode | 0o001)


TEST_ROOT = Path("/tmp/pgwarden-tests")
_swept = False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _cleanup_mine() -> None:
    for d in TEST_ROOT.glob(f"{os.getpid()}-*"):
        shutil.rmtree(d, ignore_errors=True)


def reachable_dir(tmp_path: Path) -> Path:
    """A directory for `tmp_path`'s PostgreSQL files that the OS user can always reach."""
    global _swept
    TEST_ROOT.mkdir(exist_ok=True)
    os.chmod(TEST_ROOT, 0o711)
    if not _swept:
        _swept = True
        for old in TEST_ROOT.iterdir():
            pid = old.name.split("-", 1)[0]
            if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
                shutil.rmtree(old, ignore_errors=True)
        atexit.register(_cleanup_mine)
    digest = hashlib.sha1(str(tmp_path.resolve()).encode()).hexdigest()[:10]
    d = TEST_ROOT / f"{os.getpid()}-{digest}"
    d.mkdir(exist_ok=True)
    os.chmod(d, 0o711)
    return d


def make_node_config(
    tmp_path: Path,
    name: str,
    pg_port: int,
    api_port: int,
    etcd_endpoint: str = "127.0.0.1:2379",
    **postgresql: Any,
) -> NodeConfig:
    """A NodeConfig with its data dir at `<reachable_dir(tmp_path)>/<name>/data`."""
    base = reachable_dir(tmp_path) / name
    make_traversable(base)
    pg: dict[str, Any] = {
        "listen_address": "127.0.0.1",
        "port": pg_port,
        "superuser": {"username": SUPERUSER, "password": SUPERPASS},
        "replication": {"username": REPLUSER, "password": REPLPASS},
        **postgresql,
    }
    return validate(NodeConfig, {
        "cluster": "test",
        "name": name,
        "data_dir": str(base / "data"),
        "postgresql": pg,
        "restapi": {"listen_address": "127.0.0.1", "port": api_port},
        "store": {"etcd": {"hosts": [etcd_endpoint]}},
    })


def controller(cfg: NodeConfig, settings: ClusterSettings | None = None) -> PostgresController:
    s = settings or ClusterSettings()
    return PostgresController(cfg, lambda: s)


@contextlib.contextmanager
def running(ctl: PostgresController) -> Iterator[PostgresController]:
    """Yield `ctl`; on exit stop its postmaster whatever state it is in."""
    try:
        yield ctl
    finally:
        teardown(ctl)


def teardown(ctl: PostgresController) -> None:
    pid = ctl.postmaster_pid()
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGCONT)  # a test may have left it stopped
    ctl.stop("immediate", 10)


def bootstrapped_primary(cfg: NodeConfig, settings: ClusterSettings | None = None) -> PostgresController:
    """A controller whose cluster is initialised and running as primary."""
    ctl = controller(cfg, settings)
    ctl.bootstrap(timeout=60)
    return ctl


@contextlib.contextmanager
def streaming_standby(primary: PostgresController, cfg: NodeConfig) -> Iterator[PostgresController]:
    """A replica of `primary` made from `cfg` (its slot on the primary, a base backup, started
    streaming), stopped on exit whatever state it is in."""
    pg = primary._cfg.postgresql
    with running(controller(cfg)) as r:
        primary.ensure_slots({cfg.name})
        r.clone(pg.listen_address, pg.port, timeout=60)
        r.start(role="replica", upstream=(primary._cfg.name, pg.listen_address, pg.port), wait_timeout=30)
        yield r


@contextlib.contextmanager
def primary_and_standby(
        tmp_path: Path, parameters: dict[str, str], bin_dir: str | None = None,
) -> Iterator[tuple[PostgresController, PostgresController]]:
    """A primary ("p") and a streaming standby of it ("c") on free ports, both stopped on exit."""
    p = bootstrapped_primary(make_node_config(tmp_path, "p", free_port(), free_port(),
                                              parameters=parameters, bin_dir=bin_dir))
    try:
        with streaming_standby(p, make_node_config(tmp_path, "c", free_port(), free_port(),
                                                   parameters=parameters, bin_dir=bin_dir)) as r:
            yield p, r
    finally:
        teardown(p)


def connect(cfg: NodeConfig, timeout: float = 5.0) -> psycopg.Connection[Any]:
    """A TCP superuser connection (what a client would use)."""
    pg = cfg.postgresql
    return psycopg.connect(
        host=pg.listen_address, port=pg.port, user=SUPERUSER, password=SUPERPASS,
        dbname="postgres", connect_timeout=max(2, int(timeout)), autocommit=True,
    )


def query(cfg: NodeConfig, text: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with connect(cfg) as conn:
        cur = conn.execute(text, params)
        return cur.fetchall() if cur.description else []
