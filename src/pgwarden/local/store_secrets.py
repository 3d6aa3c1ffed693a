"""The store's secrets for a `pgwarden local` cluster: etcd's root password, the user every agent
(and `ctl`) logs in to etcd or ZooKeeper as, and the raft group's shared secret. Each sits in a
0600 file under `<dir>/secrets/`, and node files name the file, never the secret (so it appears
in no command line and no copy of a node file shown to someone)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pgwarden.local.layout import new_password, write_private

STORE_USER = "pgwarden"
PREFIX = "/pgwarden"
_FILES = ("etcd-root.password", "store.password", "raft.password")


def secrets_dir(directory: Path) -> Path:
    return directory / "secrets"


def ensure_store_secrets(directory: Path) -> None:
    """Create any missing secret file (a new cluster; an old one keeps its secrets)."""
    d = secrets_dir(directory)
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    for name in _FILES:
        if not (d / name).exists():
            write_private(d / name, new_password() + "\n")


def _file(directory: Path, name: str) -> Path | None:
    path = secrets_dir(directory) / name
    return path if path.exists() else None


def store_authentication(directory: Path) -> dict[str, Any] | None:
    """A node file's `store.etcd.authentication` / `store.zookeeper.authentication` section."""
    path = _file(directory, "store.password")
    return {"username": STORE_USER, "password_file": str(path)} if path else None


def raft_password_file(directory: Path) -> str | None:
    path = _file(directory, "raft.password")
    return str(path) if path else None


def read_secret(directory: Path, name: str) -> str | None:
    path = _file(directory, name)
    return path.read_text().strip() if path else None
