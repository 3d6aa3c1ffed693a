"""A standalone ZooKeeper server (Debian's `zookeeper` package) as a `pgwarden local` component,
and the pieces of running one that the tests' ZooKeeper fixture shares: where the jars are, the
configuration, the command line and the `ruok` health probe.
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

from pgwarden.local.component import STAGE_STORE, Component
from pgwarden.local.handle import ClusterHandle
from pgwarden.local.layout import LOOPBACK, ProcRecord, make_dir

# The jar's manifest lists its dependencies (netty, jute, slf4j-api, ...); slf4j-simple makes
# the server's warnings reach its log file instead of being dropped.
JARS = ("/usr/share/java/zookeeper.jar", "/usr/share/java/slf4j-simple.jar")
MAIN_CLASS = "org.apache.zookeeper.server.quorum.QuorumPeerMain"

# A short tick lets sessions as short as the 2 s minimum ttl be granted and expire on time: the
# server grants between min and max session timeout and expires sessions on tick boundaries.
TICK_MS = 200
MIN_SESSION_MS = 400
MAX_SESSION_MS = 120_000


def zookeeper_available() -> bool:
    return shutil.which("java") is not None and Path(JARS[0]).exists()


def config_text(
    data_dir: Path,
    port: int,
    tick_ms: int = TICK_MS,
    min_session_ms: int = MIN_SESSION_MS,
    max_session_ms: int = MAX_SESSION_MS,
    address: str = LOOPBACK,
) -> str:
    """zoo.cfg for one standalone server listening on `address` only (loopback by default)."""
    return "\n".join([
        f"tickTime={tick_ms}",
        f"dataDir={data_dir}",
        f"clientPort={port}",
        f"clientPortAddress={address}",
        f"minSessionTimeout={min_session_ms}",
        f"maxSessionTimeout={max_session_ms}",
        "admin.enableServer=false",  # its HTTP admin server would take port 8080
        "4lw.commands.whitelist=ruok,srvr",
        "maxClientCnxns=0",  # every agent opens several sessions (one per lease)
        "",
    ])


def command(config_path: Path) -> list[str]:
    return [
        "java",
        "-Xmx128m",
        "-XX:+UseSerialGC",
        "-XX:TieredStopAtLevel=1",  # starts faster; a loopback server needs no peak speed
        "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
        "-Dzookeeper.jmx.log4j.disable=true",
        "-cp", ":".join(j for j in JARS if Path(j).exists()),
        MAIN_CLASS,
        str(config_path),
    ]


def healthy(port: int, host: str = LOOPBACK) -> bool:
    """The server answers the `ruok` four-letter word with `imok`."""
    try:
        with socket.create_connection((host, port), timeout=1.0) as s:
            s.sendall(b"ruok")
            return s.recv(16) == b"imok"
    except OSError:
        return False


class ZooKeeperComponent(Component):
    """One standalone ZooKeeper for `local up --store zookeeper`, started before the agents."""

    kind = "zookeeper"
    stage = STAGE_STORE

    def __init__(self, client_port: int) -> None:
        self.name = "zookeeper"
        self.client_port = client_port

    def plan(self, cluster: ClusterHandle) -> ProcRecord:
        zdir = cluster.directory / "zookeeper"
        data = zdir / "data"
        make_dir(data)
        cfg = zdir / "zoo.cfg"
        cfg.write_text(config_text(data, self.client_port))
        return ProcRecord(
            name=self.name, kind=self.kind, argv=command(cfg), log=str(cluster.directory / "zookeeper.log"),
            marker=str(cfg), ports={"client": self.client_port}, stage=self.stage,
        )

    def is_ready(self, cluster: ClusterHandle, record: ProcRecord) -> bool:
        return healthy(record.ports["client"])
