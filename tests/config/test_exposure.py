"""The agent's REST API exposure check: beyond loopback it needs credentials or the explicit
`restapi.insecure: true`; credentials are read once and must be usable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pgwarden.config.errors import ConfigError
from pgwarden.config.exposure import api_credentials, is_loopback
from pgwarden.config.load import parse_node_config

CREDS = {"superuser": {"username": "postgres", "password": "super-s3cret"},
         "replication": {"username": "replicator", "password": "repl-s3cret"}}
BASE = {"cluster": "c", "name": "n1", "data_dir": "/tmp/x", "store": {"etcd": {"hosts": ["127.0.0.1:2379"]}},
        "postgresql": CREDS}


def creds(restapi: dict[str, Any]) -> tuple[str, str] | None:
    return api_credentials(parse_node_config({**BASE, "restapi": restapi}), "n1.yaml")


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.53", "::1", "[::1]", "localhost"])
def test_loopback_addresses(host: str) -> None:
    assert is_loopback(host)
    assert creds({"listen_address": host}) is None  # no credentials needed, none required


@pytest.mark.parametrize(
    "host", ["", "0.0.0.0", "::", "10.0.0.1", "192.168.1.5", "fe80::1", "no-such-host.invalid"])
def test_beyond_loopback_without_credentials_is_refused(host: str) -> None:
    assert not is_loopback(host)
    with pytest.raises(ConfigError) as e:
        creds({"listen_address": host, "port": 8008})
    message = str(e.value)
    assert "\n" not in message and message.startswith("n1.yaml: ")
    assert "not loopback" in message and "port 8008" in message
    assert "restapi.authentication" in message and "restapi.insecure: true" in message


def test_the_opt_out_and_credentials_allow_it(tmp_path: Path) -> None:
    assert creds({"listen_address": "0.0.0.0", "insecure": True}) is None
    auth = {"username": "admin", "password": "pw"}
    assert creds({"listen_address": "0.0.0.0", "authentication": auth}) == ("admin", "pw")
    pw_file = tmp_path / "api-pw"
    pw_file.write_text("from a file\n")
    auth = {"username": "admin", "password_file": str(pw_file)}
    assert creds({"listen_address": "10.0.0.1", "authentication": auth}) == ("admin", "from a file")
    # Credentials on loopback are required too.
    assert creds({"authentication": {"username": "a", "password": "b"}}) == ("a", "b")


def test_unusable_credentials_are_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"n1.yaml: restapi.authentication: cannot read password_file"):
        creds({"authentication": {"username": "a", "password_file": str(tmp_path / "missing")}})
    with pytest.raises(ConfigError, match="the password is empty"):
        creds({"authentication": {"username": "a", "password": ""}})
    with pytest.raises(ConfigError, match="must not contain ':'"):
        creds({"authentication": {"username": "a:b", "password": "c"}})
    with pytest.raises(ConfigError, match="password or password_file"):
        creds({"authentication": {"username": "a"}})
