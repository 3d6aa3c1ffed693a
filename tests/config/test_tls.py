"""restapi.tls and postgresql.tls in a node file: good files load, bad ones are one line naming the
key path and what is wrong with the file, at load time (not at the first handshake)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pgwarden.config.errors import ConfigError
from pgwarden.config.load import parse_node_config
from pgwarden.config.tls import VerifyClient
from tests.support.tls import Pki, make_pki

CREDS = {"superuser": {"username": "postgres", "password": "super-s3cret"},
         "replication": {"username": "replicator", "password": "repl-s3cret"}}
BASE = {"cluster": "c", "name": "n1", "data_dir": "/tmp/x", "store": {"etcd": {"hosts": ["127.0.0.1:2379"]}},
        "postgresql": CREDS}


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)


def api(pki: Pki, **changes: Any) -> dict[str, Any]:
    tls = {"certfile": str(pki.node.certfile), "keyfile": str(pki.node.keyfile),
           "cafile": str(pki.ca.certfile), **changes}
    return {**BASE, "restapi": {"tls": {k: v for k, v in tls.items() if v is not None}}}


def refusal(doc: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as e:
        parse_node_config(doc, "node.yaml")
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_good_files_load_and_the_api_url_is_https(pki: Pki) -> None:
    cfg = parse_node_config(api(pki, verify_client="required"))
    assert cfg.restapi.url() == "https://127.0.0.1:8008"
    assert cfg.restapi.tls is not None and cfg.restapi.tls.verify_client is VerifyClient.REQUIRED
    client = cfg.restapi.client_tls()
    assert client is not None and client.cafile == pki.ca.certfile and client.certfile == pki.node.certfile


def test_a_missing_file_is_named(pki: Pki, tmp_path: Path) -> None:
    msg = refusal(api(pki, certfile=str(tmp_path / "nope.crt")))
    assert msg.startswith("node.yaml: ") and "restapi.tls" in msg
    assert f"certfile {tmp_path / 'nope.crt'} does not exist" in msg


def test_a_key_that_is_not_the_certificates_is_named(pki: Pki) -> None:
    msg = refusal(api(pki, keyfile=str(pki.stranger.keyfile)))
    assert "restapi.tls" in msg
    assert f"keyfile {pki.stranger.keyfile} is not the private key of certfile {pki.node.certfile}" in msg


def test_a_file_that_is_not_pem(pki: Pki, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("hello\n")
    assert f"cafile {junk} is not PEM" in refusal(api(pki, cafile=str(junk)))
    assert f"certfile {tmp_path} is a directory" in refusal(api(pki, certfile=str(tmp_path)))


def test_a_ca_file_holding_no_certificate(pki: Pki) -> None:
    assert f"cafile {pki.node.keyfile} holds no usable CA certificate" in refusal(
        api(pki, cafile=str(pki.node.keyfile)))


def test_verify_client_needs_a_ca_and_a_known_word(pki: Pki) -> None:
    msg = refusal(api(pki, cafile=None, verify_client="required"))
    assert "restapi.tls" in msg and "verify_client: required needs cafile" in msg
    assert "restapi.tls.verify_client" in refusal(api(pki, verify_client="sometimes"))


def test_postgresql_tls_is_checked_the_same_way(pki: Pki) -> None:
    doc = {**BASE, "postgresql": {**CREDS, "tls": {"certfile": str(pki.node.certfile),
                                          "keyfile": str(pki.other_ca.keyfile)}}}
    msg = refusal(doc)
    assert "postgresql.tls" in msg and "is not the private key of certfile" in msg
