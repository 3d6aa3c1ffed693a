"""What the upgrade benchmark reads from a `pgwarden local` cluster: its node files, DSNs, its
leader, and a monitor that samples, from each member's open REST API `/status`, whether every
standby streams from a primary of the expected major version."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.procs import http_json
from bench.routing import last_line, pgwarden

PG15 = Path("/usr/lib/postgresql/15/bin")


def node_dirs(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if (p / "pgwarden.yaml").is_file())


def node_file(node: Path) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((node / "pgwarden.yaml").read_text())
    return doc


def status_url(node: Path) -> str:
    api = node_file(node)["restapi"]
    return f"http://{api['listen_address']}:{api['port']}/status"


def dsn(directory: Path, via_pgbouncer: bool = False) -> str:
    args = ["local", "dsn", "--dir", str(directory)] + (["--via", "pgbouncer"] if via_pgbouncer else [])
    return last_line(pgwarden(*args))


def statuses(directory: Path) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for n in node_dirs(directory):
        try:
            st = http_json(status_url(n), timeout=1.0)
        except (OSError, ValueError):
            continue
        if isinstance(st, dict):
            out[n.name] = st
    return out


def leader(directory: Path) -> str | None:
    return next((name for name, st in statuses(directory).items()
                 if st.get("role") == "primary" and st.get("running")), None)


def all_streaming(sts: dict[str, dict[str, Any]], members: int, major: int) -> bool:
    """A running primary and every other member a streaming replica, all on `major`."""
    if len(sts) < members:
        return False

    def on(st: dict[str, Any]) -> bool:
        v = int(st.get("pg_version") or 0)  # the major (the agent publishes it so)
        return bool(st.get("running")) and (v // 10000 if v >= 10000 else v) == major

    primaries = [s for s in sts.values() if s.get("role") == "primary" and on(s)]
    replicas = [s for s in sts.values() if s.get("role") == "replica" and on(s)
                and s.get("replication_state") == "streaming"]
    return len(primaries) == 1 and len(replicas) == members - 1


@dataclass
class StreamingMonitor:
    """Samples (monotonic time, all standbys streaming on `major`) every `interval` seconds for
    the cluster in `directory` (which may not exist yet when it starts)."""

    directory: Path
    members: int
    major: int
    interval: float = 0.2
    samples: list[tuple[float, bool]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="streaming-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> list[tuple[float, bool]]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        return list(self.samples)

    def streaming_now(self) -> bool:
        s = list(self.samples)
        return bool(s) and s[-1][1]

    def _run(self) -> None:
        end = time.monotonic() + 1800
        while not self._stop.is_set() and time.monotonic() < end:
            t = time.monotonic()
            try:
                ok = all_streaming(statuses(self.directory), self.members, self.major)
            except Exception:  # a node file being rewritten, say: not streaming, as far as we know
                ok = False
            self.samples.append((t, ok))
            self._stop.wait(self.interval)


def up_pg15(directory: Path, nodes: int) -> None:
    """The old cluster both methods start from (as docs/upgrade.md has it)."""
    pgwarden("local", "up", "--dir", str(directory), "--nodes", str(nodes), "--bin-dir", str(PG15),
             "--pgbouncer", "--set", "parameters.wal_level=logical", timeout=600)
