"""A small certificate authority for `pgwarden local up --tls` and the tests: a CA and per-node
certificates (ECDSA P-256, SANs for every name and address the node is reached by, usable as
server and client certificates), written as PEM with keys at mode 0600.

Not a production CA: no revocation, a one-year validity. Operators bring their own certificates
through the node file's restapi.tls and postgresql.tls.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = datetime.timedelta(days=365)
_BACKDATE = datetime.timedelta(minutes=5)  # clocks of the machines involved may differ a little


@dataclass(frozen=True)
class CertFiles:
    certfile: Path
    keyfile: Path


def _write(path: Path, data: bytes, mode: int) -> None:
    """Atomically, created with `mode` (never readable by others, even for a moment)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pgwarden"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def make_ca(directory: Path, common_name: str = "pgwarden local CA") -> CertFiles:
    """directory/ca.crt and ca.key (0600)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name)).issuer_name(_name(common_name))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE).not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     key_cert_sign=True, crl_sign=True, encipher_only=False,
                                     decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    files = CertFiles(directory / "ca.crt", directory / "ca.key")
    directory.mkdir(parents=True, exist_ok=True)
    _write(files.keyfile, _key_pem(key), 0o600)
    _write(files.certfile, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return files


def _san(hosts: Iterable[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for h in dict.fromkeys(hosts):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    return x509.SubjectAlternativeName(names)


def make_cert(ca: CertFiles, directory: Path, name: str, hosts: Iterable[str]) -> CertFiles:
    """directory/<name>.crt and <name>.key (0600), signed by `ca`, for every host name and
    address in `hosts` (the first is also the common name)."""
    ca_key = serialization.load_pem_private_key(ca.keyfile.read_bytes(), password=None)
    ca_cert = x509.load_pem_x509_certificate(ca.certfile.read_bytes())
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{ca.keyfile}: expected an EC private key")
    hosts = list(hosts)
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name)).issuer_name(ca_cert.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE).not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=True,
                                     key_cert_sign=False, crl_sign=False, encipher_only=False,
                                     decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                              ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(_san(hosts), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    files = CertFiles(directory / f"{name}.crt", directory / f"{name}.key")
    directory.mkdir(parents=True, exist_ok=True)
    _write(files.keyfile, _key_pem(key), 0o600)
    _write(files.certfile, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return files
