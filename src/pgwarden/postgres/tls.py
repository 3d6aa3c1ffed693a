"""PostgreSQL over TLS (postgresql.tls): the node's certificate, key and CA installed where the OS
user reads them, the ssl parameters, and what connections to other members add to verify them.

The files are copied to `<data_dir>.tls/` (mode 0700, owned by the OS user; the key 0600):
PostgreSQL refuses a key file that others can read, and it runs as an unprivileged user that
cannot reach the operator's files (under /root, say). Beside the data directory, not inside it,
so pg_basebackup and pg_rewind never copy one node's key over another's. The copies are refreshed
whenever the originals change (`install` answers whether they did; the caller then reloads
PostgreSQL, which rereads its certificate on reload).

Connections to other members (replication's primary_conninfo, pg_basebackup, pg_rewind, the
agent's and the tools' own) use sslmode=verify-full against the CA when one is given, else
sslmode=require (encrypted, the server not verified).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pgwarden.config.tls import TlsFiles
from pgwarden.postgres import osuser


@dataclass(frozen=True)
class Installed:
    """The copies PostgreSQL and its tools read."""

    cert: Path
    key: Path
    ca: Path | None


def tls_dir(data_dir: Path) -> Path:
    return data_dir.with_name(data_dir.name + ".tls")


def installed(tls: TlsFiles, data_dir: Path) -> Installed:
    d = tls_dir(data_dir)
    return Installed(d / "server.crt", d / "server.key", None if tls.cafile is None else d / "ca.crt")


def install(tls: TlsFiles, data_dir: Path, uid: int, gid: int) -> bool:
    """Copy the node's files for the OS user; whether any copy changed."""
    target = installed(tls, data_dir)
    osuser.prepare_dir(tls_dir(data_dir), uid, gid, 0o700)
    pairs = [(tls.certfile, target.cert), (tls.keyfile, target.key)]
    if tls.cafile is not None and target.ca is not None:
        pairs.append((tls.cafile, target.ca))
    changed = False
    for source, copy in pairs:
        text = source.read_text()
        try:
            same = copy.read_text() == text
        except OSError:
            same = False
        if not same:
            osuser.give_file(copy, text, uid, gid, 0o600)
            changed = True
    return changed


def server_parameters(files: Installed) -> dict[str, str | bool]:
    params: dict[str, str | bool] = {"ssl": True, "ssl_cert_file": str(files.cert),
                                     "ssl_key_file": str(files.key)}
    if files.ca is not None:
        params["ssl_ca_file"] = str(files.ca)
    return params


def client_options(ca: Path | None) -> dict[str, str]:
    """libpq options for a connection to another member."""
    if ca is None:
        return {"sslmode": "require"}
    return {"sslmode": "verify-full", "sslrootcert": str(ca)}


def tool_options(tls: TlsFiles | None) -> tuple[tuple[str, str], ...]:
    """ConnParams.ssl for a tool run by the operator (who reads the node file's own CA path)."""
    return () if tls is None else tuple(client_options(tls.cafile).items())
