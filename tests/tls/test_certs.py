"""The local CA of `local up --tls`: certificates that verify against it for every SAN and for
nothing else, usable by servers and clients, with private keys at mode 0600."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from pgwarden.tls.certs import make_ca, make_cert
from pgwarden.tls.files import check_files


def test_node_certificate_names_every_host_and_is_signed_by_the_ca(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "ca")
    node = make_cert(ca, tmp_path / "n", "node2", ["127.0.0.2", "localhost", "db2.example"])
    check_files(node.certfile, node.keyfile, ca.certfile)
    cert = x509.load_pem_x509_certificate(node.certfile.read_bytes())
    ca_cert = x509.load_pem_x509_certificate(ca.certfile.read_bytes())
    cert.verify_directly_issued_by(ca_cert)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.2")]
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "db2.example"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_keys_are_private_and_certificates_readable(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "ca")
    node = make_cert(ca, tmp_path / "n", "node1", ["127.0.0.1"])
    for key in (ca.keyfile, node.keyfile):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    for cert in (ca.certfile, node.certfile):
        assert stat.S_IMODE(cert.stat().st_mode) == 0o644
    assert not list(tmp_path.rglob("*.tmp"))


def test_another_ca_does_not_vouch_for_the_node(tmp_path: Path) -> None:
    import pytest
    ca, other = make_ca(tmp_path / "ca"), make_ca(tmp_path / "other")
    node = make_cert(ca, tmp_path / "n", "node1", ["127.0.0.1"])
    cert = x509.load_pem_x509_certificate(node.certfile.read_bytes())
    with pytest.raises(Exception):  # noqa: B017 - cryptography raises ValueError or InvalidSignature
        cert.verify_directly_issued_by(x509.load_pem_x509_certificate(other.certfile.read_bytes()))
