"""Checking a certificate, its key and a CA file before anything uses them, each failure one line
that says which file is wrong and why (OpenSSL's own messages name neither)."""

from __future__ import annotations

import os
import ssl
from pathlib import Path


class TlsFileError(ValueError):
    """A certificate, key or CA file that cannot be used; the message names it."""


def _readable(what: str, path: Path) -> None:
    try:
        with open(path, "rb") as f:
            head = f.read(65536)
    except FileNotFoundError:
        raise TlsFileError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise TlsFileError(f"{what} {path} is a directory, not a PEM file") from None
    except OSError as e:
        raise TlsFileError(f"{what} {path} cannot be read: {e.strerror}") from None
    if b"-----BEGIN " not in head:
        raise TlsFileError(f"{what} {path} is not PEM (no -----BEGIN line)")


def load_chain(ctx: ssl.SSLContext, certfile: Path, keyfile: Path) -> None:
    """ctx.load_cert_chain, its errors named."""
    _readable("certfile", certfile)
    _readable("keyfile", keyfile)
    try:
        ctx.load_cert_chain(os.fspath(certfile), os.fspath(keyfile))
    except ssl.SSLError as e:
        if "KEY_VALUES_MISMATCH" in str(e) or e.reason == "KEY_VALUES_MISMATCH":
            raise TlsFileError(f"keyfile {keyfile} is not the private key of certfile {certfile}") from None
        raise TlsFileError(f"certfile {certfile} / keyfile {keyfile}: not a usable certificate and "
                           f"unencrypted private key ({e.reason or e})") from None


def load_ca(ctx: ssl.SSLContext, cafile: Path) -> None:
    """ctx.load_verify_locations, its errors named."""
    _readable("cafile", cafile)
    try:
        ctx.load_verify_locations(cafile=os.fspath(cafile))
    except ssl.SSLError as e:
        raise TlsFileError(f"cafile {cafile} holds no usable CA certificate ({e.reason or e})") from None


def check_files(certfile: Path, keyfile: Path, cafile: Path | None) -> None:
    """Raise TlsFileError unless the key belongs to the certificate and the CA file loads."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    load_chain(ctx, certfile, keyfile)
    if cafile is not None:
        load_ca(ctx, cafile)


def check_ca(cafile: Path) -> None:
    load_ca(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), cafile)


def signature(*paths: Path | None) -> tuple[tuple[int, int, int, int], ...]:
    """What changes when any of the files is replaced or rewritten: (inode, size, mtime, ctime)."""
    out = []
    for p in paths:
        if p is None:
            continue
        try:
            st = os.stat(p)
        except OSError:
            out.append((0, 0, 0, 0))
            continue
        out.append((st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(out)
