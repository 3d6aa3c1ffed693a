"""PostgreSQL with postgresql.tls against real servers: ssl = on with the node's certificate (kept
in a directory the OS user cannot reach, so the agent's copies are what the server reads),
unencrypted TCP refused, and clone, streaming and pg_rewind over verify-full connections."""

from __future__ import annotations

import os
import socket
import ssl
import stat
import struct
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography import x509

from pgwarden.config.schema import NodeConfig
from pgwarden.postgres.controller import PostgresController, PostgresError
from pgwarden.postgres.tls import tls_dir
from pgwarden.tls.certs import CertFiles, make_ca, make_cert
from tests.support.pg import (
    NEEDS_POSTGRES,
    REPLPASS,
    REPLUSER,
    SUPERPASS,
    SUPERUSER,
    controller,
    make_node_config,
    query,
    teardown,
)
from tests.support.ports import free_port
from tests.support.wait import wait_for

pytestmark = [
    pytest.mark.integration,
    NEEDS_POSTGRES,
]

HOST = "127.0.0.1"


def tls_config(tmp_path: Path, name: str, ca: CertFiles) -> NodeConfig:
    # The originals stay under pytest's 0700 tmp_path: the OS user cannot read them.
    cert = make_cert(ca, tmp_path / "certs" / name, name, [HOST, "localhost"])
    tls = {"certfile": str(cert.certfile), "keyfile": str(cert.keyfile), "cafile": str(ca.certfile)}
    return make_node_config(tmp_path, name, free_port(), free_port(), tls=tls)


def client(cfg: NodeConfig, ca: Path | None, sslmode: str, user: str = SUPERUSER,
           password: str = SUPERPASS, **extra: Any) -> psycopg.Connection[Any]:
    kw: dict[str, Any] = {"sslrootcert": str(ca)} if ca else {}
    return psycopg.connect(host=HOST, port=cfg.postgresql.port, user=user, password=password,
                           dbname="postgres", connect_timeout=3, sslmode=sslmode, autocommit=True,
                           **kw, **extra)


def served_serial(port: int, ca: Path) -> int:
    """The serial of the certificate PostgreSQL presents (SSLRequest, then a TLS handshake)."""
    ctx = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection((HOST, port), timeout=5) as raw:
        raw.sendall(struct.pack("!ii", 8, 80877103))
        assert raw.recv(1) == b"S"
        with ctx.wrap_socket(raw, server_hostname=HOST) as conn:
            der = conn.getpeercert(binary_form=True)
    assert der is not None
    return int(x509.load_der_x509_certificate(der).serial_number)


def test_ssl_on_verify_full_and_no_plain_tcp(tmp_path: Path) -> None:
    ca, other = make_ca(tmp_path / "ca"), make_ca(tmp_path / "other")
    cfg = tls_config(tmp_path, "a", ca)
    a = controller(cfg)
    try:
        a.bootstrap(timeout=60)
        with client(cfg, ca.certfile, "verify-full") as conn:
            row = conn.execute("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
            assert row is not None and row[0] is True and row[1].startswith("TLSv1.")
        with pytest.raises(psycopg.OperationalError, match=r"no pg_hba.conf entry .* no encryption"):
            client(cfg, None, "disable")
        with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
            client(cfg, other.certfile, "verify-full")
        key = tls_dir(a.data_dir) / "server.key"
        st = key.stat()
        assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == a.uid
        assert stat.S_IMODE(tls_dir(a.data_dir).stat().st_mode) == 0o700
        assert not str(tls_dir(a.data_dir)).startswith(str(a.data_dir) + os.sep)

        # Rotation: new files are copied and the running server reloads them.
        tls = cfg.postgresql.tls
        assert tls is not None
        new = make_cert(ca, tmp_path / "rotated", "a", [HOST])
        tls.certfile.write_bytes(new.certfile.read_bytes())
        tls.keyfile.write_bytes(new.keyfile.read_bytes())
        want = int(x509.load_pem_x509_certificate(new.certfile.read_bytes()).serial_number)
        assert served_serial(cfg.postgresql.port, ca.certfile) != want
        a.refresh_tls(5)
        wait_for(lambda: served_serial(cfg.postgresql.port, ca.certfile) == want, 10,
                 "the rotated certificate")
        assert query(cfg, "SELECT 1") == [(1,)]
    finally:
        teardown(a)


def test_clone_stream_and_rewind_over_verify_full(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "ca")
    a = controller(tls_config(tmp_path, "a", ca))
    b: PostgresController | None = None
    try:
        a.bootstrap(timeout=60)
        a_port = a._cfg.postgresql.port
        query(a._cfg, "CREATE TABLE t (id int PRIMARY KEY)")
        query(a._cfg, "INSERT INTO t VALUES (1)")
        b = controller(tls_config(tmp_path, "b", ca))
        b_port = b._cfg.postgresql.port
        a.ensure_slots({"b"})
        b.clone(HOST, a_port, timeout=60)
        b.start(role="replica", upstream=("a", HOST, a_port), wait_timeout=30)
        wait_for(lambda: b is not None and b.observe(2).streaming, 20, "b streams from a")
        conninfo = query(b._cfg, "SHOW primary_conninfo")[0][0]
        assert "sslmode=verify-full" in conninfo and f"sslrootcert={tls_dir(b.data_dir)}/ca.crt" in conninfo
        rows = query(a._cfg, "SELECT s.ssl FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid)")
        assert rows == [(True,)]
        with client(a._cfg, ca.certfile, "verify-full", REPLUSER, REPLPASS, replication="true") as conn:
            assert conn.pgconn.exec_(b"IDENTIFY_SYSTEM").ntuples == 1

        b.promote(20)
        query(a._cfg, "INSERT INTO t VALUES (99)")  # a fork pg_rewind must undo
        a.stop("fast", 20)
        b.ensure_slots({"a"})
        assert a.rewind(HOST, b_port, 60) is True
        a.start(role="replica", upstream=("b", HOST, b_port), wait_timeout=30)
        wait_for(lambda: query(a._cfg, "SELECT id FROM t ORDER BY id") == [(1,)], 30, "a on b's timeline")
    finally:
        teardown(a)
        if b is not None:
            teardown(b)


def test_a_member_trusting_another_ca_cannot_clone(tmp_path: Path) -> None:
    ca, other = make_ca(tmp_path / "ca"), make_ca(tmp_path / "other")
    a = controller(tls_config(tmp_path, "a", ca))
    try:
        a.bootstrap(timeout=60)
        stray = controller(tls_config(tmp_path, "c", other))
        with pytest.raises(PostgresError, match="certificate verify failed"):
            stray.clone(HOST, a._cfg.postgresql.port, timeout=60)
    finally:
        teardown(a)
