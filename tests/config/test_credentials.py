"""PostgreSQL credentials in a node file: required, not weak, and password files read at load."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from pgwarden.config.errors import ConfigError
from pgwarden.config.load import load_node_config, parse_node_config

SUPER = {"username": "postgres", "password": "super-s3cret"}
REPL = {"username": "replicator", "password": "repl-s3cret"}
BASE: dict[str, Any] = {"cluster": "c", "name": "n1", "data_dir": "/tmp/x",
                        "store": {"etcd": {"hosts": ["127.0.0.1:2379"]}}}


def refusal(postgresql: Any) -> str:
    with pytest.raises(ConfigError) as e:
        parse_node_config({**BASE, "postgresql": postgresql}, "n1.yaml")
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_no_postgresql_section_is_refused_with_what_to_write() -> None:
    with pytest.raises(ConfigError, match=r"n1.yaml: missing required key 'postgresql'; set postgresql: "
                                          r"\(with superuser and replication credentials\)"):
        parse_node_config(BASE, "n1.yaml")


@pytest.mark.parametrize("missing", ["superuser", "replication"])
def test_missing_credentials_are_refused(missing: str) -> None:
    pg = {"superuser": SUPER, "replication": REPL}
    del pg[missing]
    msg = refusal(pg)
    assert (f"missing required key 'postgresql.{missing}'; "
            f"set postgresql.{missing}: username and password") in msg


@pytest.mark.parametrize(("password", "problem"), [
    ("", "the password is empty"),
    ("postgres", "the password is the username"),
    ("short", "the password is shorter than 8 characters"),
    ("1234567", "the password is shorter than 8 characters"),
])
def test_weak_passwords_are_refused(password: str, problem: str) -> None:
    msg = refusal({"superuser": {"username": "postgres", "password": password}, "replication": REPL})
    assert msg.startswith(f"n1.yaml: 'postgresql.superuser': {problem}; set a password of at least 8")


def test_the_replication_role_is_held_to_the_same_rule() -> None:
    msg = refusal({"superuser": SUPER, "replication": {"username": "replicator", "password": "replicator"}})
    assert "'postgresql.replication': the password is the username" in msg


def test_eight_characters_that_are_not_the_username_are_enough() -> None:
    su = {"username": "postgres", "password": "12345678"}
    cfg = parse_node_config({**BASE, "postgresql": {"superuser": su, "replication": REPL}})
    assert cfg.postgresql.superuser.secret() == "12345678"


def write(tmp_path: Path, postgresql: Any, **extra: Any) -> Path:
    path = tmp_path / "n1.yaml"
    path.write_text(yaml.safe_dump({**BASE, "postgresql": postgresql, **extra}))
    return path


def load_refusal(path: Path) -> str:
    with pytest.raises(ConfigError) as e:
        load_node_config(path)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_a_missing_password_file_fails_at_load(tmp_path: Path) -> None:
    pwfile = tmp_path / "nope"
    path = write(tmp_path, {"superuser": {"username": "postgres", "password_file": str(pwfile)},
                            "replication": REPL})
    assert load_refusal(path) == (f"{path}: postgresql.superuser: cannot read password_file {pwfile}: "
                                  f"No such file or directory; make it readable by the user running pgwarden")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_password_file_fails_at_load(tmp_path: Path) -> None:
    pwfile = tmp_path / "secret"
    pwfile.write_text("long-enough-secret\n")
    pwfile.chmod(0)
    path = write(tmp_path, {"superuser": SUPER,
                            "replication": {"username": "replicator", "password_file": str(pwfile)}})
    assert "postgresql.replication: cannot read password_file" in load_refusal(path)
    assert "Permission denied" in load_refusal(path)


@pytest.mark.parametrize(("content", "problem"), [
    ("\n", "is empty; write the password into it"),
    ("postgres\n", "the password is the username"),
    ("abc\n", "shorter than 8 characters"),
])
def test_an_empty_or_weak_password_file_fails_at_load(tmp_path: Path, content: str,
                                                      problem: str) -> None:
    pwfile = tmp_path / "secret"
    pwfile.write_text(content)
    path = write(tmp_path, {"superuser": {"username": "postgres", "password_file": str(pwfile)},
                            "replication": REPL})
    msg = load_refusal(path)
    assert msg.startswith(f"{path}: postgresql.superuser: ") and problem in msg


def test_a_good_password_file_loads_and_the_api_one_is_checked_too(tmp_path: Path) -> None:
    good = tmp_path / "good"
    good.write_text("long-enough-secret\n")
    path = write(tmp_path, {"superuser": {"username": "postgres", "password_file": str(good)},
                            "replication": REPL})
    assert load_node_config(path).postgresql.superuser.secret() == "long-enough-secret"
    empty = tmp_path / "empty"
    empty.write_text("")
    path = write(tmp_path, {"superuser": SUPER, "replication": REPL},
                 restapi={"authentication": {"username": "admin", "password_file": str(empty)}})
    assert "restapi.authentication: password_file" in load_refusal(path)


def test_a_store_password_file_is_checked_at_load_too(tmp_path: Path) -> None:
    missing = tmp_path / "etcd-pw"
    path = write(tmp_path, {"superuser": SUPER, "replication": REPL},
                 store={"etcd": {"hosts": ["127.0.0.1:2379"],
                                 "authentication": {"username": "pgwarden", "password_file": str(missing)}}})
    assert load_refusal(path).startswith(f"{path}: store.etcd.authentication: cannot read password_file")
