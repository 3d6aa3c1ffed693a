"""The TLS blocks of a node file: `restapi.tls` (the REST API, and the node's client side when it
calls other members' APIs) and `postgresql.tls` (PostgreSQL's `ssl = on` and the `verify-full`
connections of replication, pg_rewind and pg_basebackup).

The files are checked when the file is loaded, so a bad path or a key that does not belong to its
certificate is one line naming the key, not a failed handshake later.
"""

from __future__ import annotations

import enum
from pathlib import Path

from pgwarden.core.settings import Strict
from pgwarden.tls.contexts import TlsPaths
from pgwarden.tls.files import TlsFileError, check_ca, check_files


class VerifyClient(enum.Enum):
    NONE = "none"  # no client certificate asked for
    OPTIONAL = "optional"  # asked for; a client without one is served, one that fails cafile is refused
    REQUIRED = "required"  # a client without a certificate signed by cafile is refused


class TlsFiles(Strict, frozen=True, kw_only=True):
    """A certificate, its private key (PEM) and the CA that signs the peers' certificates."""

    certfile: Path
    keyfile: Path
    cafile: Path | None = None

    def __post_init__(self) -> None:
        try:
            check_files(self.certfile, self.keyfile, self.cafile)
        except TlsFileError as e:
            raise ValueError(str(e)) from None


class ApiTls(TlsFiles, frozen=True, kw_only=True):
    verify_client: VerifyClient = VerifyClient.NONE

    def __post_init__(self) -> None:
        if self.verify_client is not VerifyClient.NONE and self.cafile is None:
            raise ValueError(f"verify_client: {self.verify_client.value} needs cafile (the CA that "
                             f"signs the clients' certificates)")
        super().__post_init__()

    def server_paths(self) -> TlsPaths:
        return TlsPaths(self.certfile, self.keyfile, self.cafile, self.verify_client.value)

    def client_paths(self) -> TlsPaths:
        """Calling other members' APIs: trust cafile, present our own certificate (the same CA
        signs every member's, so verify_client: required works between them and for ctl)."""
        return TlsPaths(self.certfile, self.keyfile, self.cafile)


class ClientTls(Strict, frozen=True, kw_only=True):
    """A client's side (store.etcd.tls): the CA that signs the servers' certificates (None: the
    system's CAs) and, for servers that require one, our certificate and key."""

    cafile: Path | None = None
    certfile: Path | None = None
    keyfile: Path | None = None

    def __post_init__(self) -> None:
        if (self.certfile is None) != (self.keyfile is None):
            raise ValueError("give certfile and keyfile together (or neither)")
        try:
            if self.certfile is not None and self.keyfile is not None:
                check_files(self.certfile, self.keyfile, self.cafile)
            elif self.cafile is not None:
                check_ca(self.cafile)
        except TlsFileError as e:
            raise ValueError(str(e)) from None

    def paths(self) -> TlsPaths:
        return TlsPaths(self.certfile, self.keyfile, self.cafile)
