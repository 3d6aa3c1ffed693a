"""The unprivileged OS user PostgreSQL runs as: create it, run commands as it, hand it directories.

PostgreSQL refuses to run as root. When the agent runs as root, every PostgreSQL binary is
started as `postgresql.os_user`; when it does not, commands run as the agent's own user.
"""

from __future__ import annotations

import codecs
import grp
import logging
import os
import pwd
import selectors
import shlex
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

log = logging.getLogger("pgwarden.postgres")

HOME_ROOT = Path("/var/lib/pgwarden")


class OsUserError(Exception):
    """The OS user cannot be created or used."""


@dataclass(frozen=True)
class OsUser:
    name: str
    uid: int
    gid: int
    home: str


def is_root() -> bool:
    return os.geteuid() == 0


def lookup(name: str) -> OsUser | None:
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        return None
    return OsUser(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir)


def current_user() -> OsUser:
    pw = pwd.getpwuid(os.geteuid())
    return OsUser(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir)


def ensure_os_user(name: str) -> tuple[int, int]:
    """(uid, gid) of `name`, creating it as a system user when missing (root only)."""
    found = lookup(name)
    if found is not None:
        return found.uid, found.gid
    if not is_root():
        raise OsUserError(f"OS user {name!r} does not exist and we are not root to create it")
    home = HOME_ROOT / f"home-{name}"
    HOME_ROOT.mkdir(parents=True, exist_ok=True)
    os.chmod(HOME_ROOT, 0o755)
    argv = ["useradd", "--system", "--create-home", "--home-dir", str(home),
            "--shell", "/bin/sh", "--user-group", name]
    log.info("creating OS user %s: %s", name, shlex.join(argv))
    res = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if res.returncode != 0:
        raise OsUserError(f"useradd {name} failed ({res.returncode}): {res.stderr.strip()}")
    created = lookup(name)
    if created is None:
        raise OsUserError(f"useradd {name} succeeded but the user cannot be found")
    return created.uid, created.gid


def _identity(user: str | None) -> OsUser:
    """Who a command will run as: `user` when we are root, else ourselves."""
    if user is None or not is_root():
        return current_user()
    found = lookup(user)
    if found is None:
        raise OsUserError(f"OS user {user!r} does not exist")
    return found


def _env(who: OsUser, extra: Mapping[str, str] | None) -> dict[str, str]:
    # A clean environment: the agent's own PG* variables (PGPASSWORD, PGHOST ...) must not leak
    # into the server or the tools, and messages must be in English for the parsers.
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": who.home or "/",
        "USER": who.name,
        "LOGNAME": who.name,
        "LC_ALL": "C",
        "LANG": "C",
    }
    if extra:
        env.update(extra)
    return env


def _popen_kwargs(who: OsUser, cwd: Path | None) -> dict[str, Any]:
    kw: dict[str, Any] = {"start_new_session": True}
    if is_root() and who.uid != 0:
        kw.update(user=who.uid, group=who.gid, extra_groups=[])
    # The child's cwd must be one it may enter; the agent's cwd (under /root, say) may not be.
    kw["cwd"] = str(cwd) if cwd is not None else "/"
    return kw


def run_as(
    user: str | None,
    argv: Sequence[str],
    timeout: float,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    input: str | None = None,  # mirrors subprocess.run
) -> subprocess.CompletedProcess[str]:
    """Run `argv` to completion as `user` (when we are root), capturing text output.
    Raises subprocess.TimeoutExpired after `timeout` seconds (the child is killed)."""
    who = _identity(user)
    log.info("run as %s: %s", who.name, shlex.join(argv))
    return subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(who, env),
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        check=False,
        **_popen_kwargs(who, cwd),
    )


def run_as_reading_stderr(
    user: str | None,
    argv: Sequence[str],
    timeout: float,
    on_stderr: Callable[[str], None],
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """run_as, handing each piece of stderr to `on_stderr` as it arrives (a tool's progress);
    the result still carries all of stdout and stderr. Raises subprocess.TimeoutExpired after
    `timeout` seconds, the child killed, as run_as does."""
    who = _identity(user)
    log.info("run as %s: %s", who.name, shlex.join(argv))
    proc = subprocess.Popen(list(argv), env=_env(who, env), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **_popen_kwargs(who, None))
    assert proc.stdout is not None and proc.stderr is not None
    deadline = time.monotonic() + timeout
    out: list[str] = []
    err: list[str] = []
    decoders = {proc.stdout.fileno(): codecs.getincrementaldecoder("utf-8")("replace"),
                proc.stderr.fileno(): codecs.getincrementaldecoder("utf-8")("replace")}
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ, out)
            sel.register(proc.stderr, selectors.EVENT_READ, err)
            while sel.get_map():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise subprocess.TimeoutExpired(list(argv), timeout, "".join(out), "".join(err))
                for key, _ in sel.select(left):
                    data = os.read(key.fd, 65536)
                    text = decoders[key.fd].decode(data, final=not data)
                    if not data:
                        sel.unregister(key.fileobj)
                    if text:
                        key.data.append(text)
                        if key.data is err:
                            on_stderr(text)
        code = proc.wait(max(0.1, deadline - time.monotonic()))
    except BaseException:  # the deadline, or the caller's callback gave up (Ctrl-C)
        proc.kill()
        proc.wait()
        raise
    finally:
        proc.stdout.close()
        proc.stderr.close()
    return subprocess.CompletedProcess(list(argv), code, "".join(out), "".join(err))


def spawn_as(
    user: str | None,
    argv: Sequence[str],
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    stdout: int | IO[Any] | None = subprocess.DEVNULL,
    stderr: int | IO[Any] | None = subprocess.DEVNULL,
) -> subprocess.Popen[bytes]:
    """Start a long-running `argv` as `user` in its own session (our signals don't reach it)."""
    who = _identity(user)
    log.info("spawn as %s: %s", who.name, shlex.join(argv))
    return subprocess.Popen(
        list(argv),
        env=_env(who, env),
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        **_popen_kwargs(who, cwd),
    )


def prepare_dir(path: Path, uid: int, gid: int, mode: int = 0o700) -> None:
    """Create `path` (and parents) and give it to uid:gid with `mode`."""
    path.mkdir(parents=True, exist_ok=True)
    if is_root():
        os.chown(path, uid, gid)
    os.chmod(path, mode)


def give_file(path: Path, content: str, uid: int, gid: int, mode: int = 0o600) -> None:
    """Write `content` to `path` atomically, owned by uid:gid with `mode` from the start."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        if is_root():
            os.chown(tmp, uid, gid)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def first_blocked_dir(path: Path, uid: int, gids: set[int]) -> Path | None:
    """The first directory on the way to `path` that uid (with groups `gids`) may not traverse,
    judged from permission bits alone; None when all are traversable."""
    if uid == 0:
        return None
    current = Path("/")
    for part in path.resolve().parts[1:]:
        st = current.stat()
        if st.st_uid == uid:
            ok = bool(st.st_mode & 0o100)
        elif st.st_gid in gids:
            ok = bool(st.st_mode & 0o010)
        else:
            ok = bool(st.st_mode & 0o001)
        if not ok:
            return current
        current = current / part
    return None


def group_ids(user: str) -> set[int]:
    found = lookup(user)
    if found is None:
        return set()
    gids = {found.gid}
    gids.update(g.gr_gid for g in grp.getgrall() if user in g.gr_mem)
    return gids
