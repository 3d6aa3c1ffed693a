"""The logical gate in front of a server with postgresql.tls: the client's TLS ends at the gate with
the server's own certificate, so verify-full and SCRAM channel binding (channel_binding=require,
tls-server-end-point) pass through it; an unencrypted client is refused by the server's pg_hba
(hostssl): the gate refuses it before the server is reached."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgwarden.config.schema import NodeConfig
from pgwarden.core.gate import GATE_PARAMETER
from pgwarden.gate.server import GateServer
from pgwarden.gate.start import gate_for
from pgwarden.tls.certs import make_ca, make_cert
from tests.support.pg import (
    NEEDS_POSTGRES,
    SUPERPASS,
    SUPERUSER,
    bootstrapped_primary,
    make_node_config,
    teardown,
)
from tests.support.ports import free_port

pytestmark = [NEEDS_POSTGRES]
HOST = "127.0.0.1"


@pytest.fixture
def tls_gate(tmp_path: Path) -> Iterator[tuple[NodeConfig, GateServer, Path]]:
    ca = make_ca(tmp_path / "ca")
    cert = make_cert(ca, tmp_path / "certs" / "src", "src", [HOST, "localhost"])
    tls = {"certfile": str(cert.certfile), "keyfile": str(cert.keyfile), "cafile": str(ca.certfile)}
    cfg = make_node_config(tmp_path, "src", free_port(), free_port(), tls=tls, logical_gate_port=free_port())
    ctl = bootstrapped_primary(cfg)
    gate = gate_for(cfg, ctl.local_params)
    assert gate is not None
    try:
        gate.start()
        yield cfg, gate, Path(ca.certfile)
    finally:
        gate.stop()
        teardown(ctl)


def connect(port: int, **extra: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(host=HOST, port=port, user=SUPERUSER, password=SUPERPASS, dbname="postgres",
                           connect_timeout=5, autocommit=True, **extra)


def test_verify_full_and_channel_binding_through_the_gate(
        tls_gate: tuple[NodeConfig, GateServer, Path]) -> None:
    _, gate, ca = tls_gate
    port = gate.listen[1]
    with connect(port, sslmode="verify-full", sslrootcert=str(ca), channel_binding="require") as conn:
        assert conn.info.parameter_status(GATE_PARAMETER) == "on"
        assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone() == (True,)
    with pytest.raises(psycopg.OperationalError, match="accepts only encrypted connections"):
        connect(port, sslmode="disable").close()
