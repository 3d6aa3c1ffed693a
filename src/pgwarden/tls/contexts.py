"""SSL contexts for the REST API's server and client sides, and a source that follows the files.

Rotation without a failed request: a ContextSource builds a new SSLContext when the files change
(checked by stat at most every `interval` seconds, or at once after `reload()`, which SIGHUP
calls) and swaps it in with one assignment. Connections already accepted keep the context they
were wrapped with; new ones get the new one. A rotation caught half-way (a new certificate beside
the old key) fails to load: the old context stays in use, a warning is logged, and the next check
tries again, so clients never see a broken pair.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pgwarden.tls.files import TlsFileError, load_ca, load_chain, signature

log = logging.getLogger("pgwarden.tls")

VERIFY_MODES = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


@dataclass(frozen=True)
class TlsPaths:
    """The files of one side: our certificate and key (optional for a client), the CA we trust
    (None: the system's CAs), and for a server whether to ask clients for certificates."""

    certfile: Path | None
    keyfile: Path | None
    cafile: Path | None
    verify_client: str = "none"


def server_context(paths: TlsPaths) -> ssl.SSLContext:
    if paths.certfile is None or paths.keyfile is None:
        raise TlsFileError("a TLS server needs certfile and keyfile")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    load_chain(ctx, paths.certfile, paths.keyfile)
    ctx.verify_mode = VERIFY_MODES[paths.verify_client]
    if paths.cafile is not None:
        load_ca(ctx, paths.cafile)
    return ctx


def client_context(paths: TlsPaths) -> ssl.SSLContext:
    """Verifies the server's certificate and host name against cafile (the system CAs without
    one); presents our certificate when we have one (for verify_client: optional/required)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname and CERT_REQUIRED by default
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if paths.cafile is not None:
        load_ca(ctx, paths.cafile)
    else:
        ctx.load_default_certs()
    if paths.certfile is not None and paths.keyfile is not None:
        load_chain(ctx, paths.certfile, paths.keyfile)
    return ctx


class ContextSource:
    """The current SSLContext built from `paths` by `build`, rebuilt when the files change."""

    def __init__(self, paths: TlsPaths, build: Callable[[TlsPaths], ssl.SSLContext],
                 interval: float = 1.0) -> None:
        self.paths = paths
        self._build = build
        self._interval = interval
        self._lock = threading.Lock()
        self._sig = self._signature()
        self._ctx = build(paths)  # the first build raises: a node must not start without TLS
        self._checked = time.monotonic()
        self._failed_sig: tuple[object, ...] | None = None
        self.generation = 1  # how many contexts were built (tests and logs)

    def _signature(self) -> tuple[object, ...]:
        return signature(self.paths.certfile, self.paths.keyfile, self.paths.cafile)

    def get(self) -> ssl.SSLContext:
        """The context to wrap a new connection with."""
        if time.monotonic() - self._checked >= self._interval:
            self._refresh(force=False)
        return self._ctx

    def reload(self) -> None:
        """Check the files now (SIGHUP)."""
        self._refresh(force=True)

    def _refresh(self, force: bool) -> None:
        with self._lock:
            self._checked = time.monotonic()
            sig = self._signature()
            if sig == self._sig and not force:
                return
            if sig == self._failed_sig and not force:
                return  # already warned about this state of the files
            try:
                ctx = self._build(self.paths)
            except (TlsFileError, ssl.SSLError, OSError) as e:
                if sig != self._failed_sig:
                    log.warning("TLS: keeping the certificate in use: the files changed but do not "
                                "load (%s); will retry when they change again", e)
                self._failed_sig = sig
                return
            self._ctx, self._sig, self._failed_sig = ctx, sig, None
            self.generation += 1
            log.info("TLS: loaded %s (context %d)", self.paths.certfile or self.paths.cafile,
                     self.generation)
