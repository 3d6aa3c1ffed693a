"""ContextSource: a context rebuilt when its files change, the old one kept while the files are
caught half-way through a rotation (a new certificate beside the old key), one warning for it."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from pgwarden.tls.certs import make_ca, make_cert
from pgwarden.tls.contexts import ContextSource, TlsPaths, client_context, server_context
from pgwarden.tls.files import TlsFileError


def test_half_way_rotation_keeps_the_old_context(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ca = make_ca(tmp_path / "ca")
    first, second = (make_cert(ca, tmp_path / n, "node1", ["127.0.0.1"]) for n in ("a", "b"))
    live = tmp_path / "live"
    live.mkdir()
    shutil.copy(first.certfile, live / "n.crt")
    shutil.copy(first.keyfile, live / "n.key")
    source = ContextSource(TlsPaths(live / "n.crt", live / "n.key", ca.certfile), server_context, interval=0)
    old = source.get()
    assert source.get() is old  # unchanged files: the same context
    shutil.copy(second.certfile, live / "n.crt")  # the key not yet
    with caplog.at_level(logging.WARNING, "pgwarden.tls"):
        assert source.get() is old and source.get() is old
    warnings = [r for r in caplog.records if "keeping the certificate in use" in r.getMessage()]
    assert len(warnings) == 1 and "is not the private key" in warnings[0].getMessage()
    shutil.copy(second.keyfile, live / "n.key")
    new = source.get()
    assert new is not old and source.generation == 2


def test_a_source_whose_files_do_not_load_at_start_raises(tmp_path: Path) -> None:
    with pytest.raises(TlsFileError, match="does not exist"):
        ContextSource(TlsPaths(tmp_path / "x.crt", tmp_path / "x.key", None), server_context)


def test_client_context_verifies_host_names_and_the_chain(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "ca")
    ctx = client_context(TlsPaths(None, None, ca.certfile))
    assert ctx.check_hostname and ctx.verify_mode.name == "CERT_REQUIRED"
    node = make_cert(ca, tmp_path, "n", ["127.0.0.1"])
    server = server_context(TlsPaths(node.certfile, node.keyfile, ca.certfile, "required"))
    assert server.verify_mode.name == "CERT_REQUIRED"
