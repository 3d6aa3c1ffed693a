"""Certificates for tests, made with pgwarden's own local CA (pgwarden.tls.certs): a CA, a node
certificate for loopback, and a second, unrelated CA for what must be refused."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pgwarden.tls.certs import CertFiles, make_ca, make_cert
from pgwarden.tls.contexts import TlsPaths

LOOPBACK_HOSTS = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class Pki:
    ca: CertFiles
    node: CertFiles  # a server and client certificate for 127.0.0.1 and localhost
    other_ca: CertFiles  # trusted by nobody
    stranger: CertFiles  # a client certificate signed by other_ca

    def server(self, verify_client: str = "none") -> TlsPaths:
        return TlsPaths(self.node.certfile, self.node.keyfile, self.ca.certfile, verify_client)

    def client(self, with_cert: bool = True) -> TlsPaths:
        if with_cert:
            return TlsPaths(self.node.certfile, self.node.keyfile, self.ca.certfile)
        return TlsPaths(None, None, self.ca.certfile)


def make_pki(directory: Path) -> Pki:
    ca = make_ca(directory / "ca")
    other = make_ca(directory / "other", "someone else's CA")
    return Pki(ca, make_cert(ca, directory / "certs", "node1", LOOPBACK_HOSTS), other,
               make_cert(other, directory / "other", "stranger", LOOPBACK_HOSTS))
