"""Build a node's logical gate from its node file (postgresql.logical_gate_port)."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path

from pgwarden.config.schema import NodeConfig
from pgwarden.gate.relay import Upstream
from pgwarden.gate.server import GateServer
from pgwarden.gate.supervisor import GateProcess
from pgwarden.postgres import sql
from pgwarden.postgres.server import local_host
from pgwarden.tls.contexts import TlsPaths, server_context
from pgwarden.tls.files import load_ca

CLOCK_TIMEOUT = 2.0  # each read of the confirmed position (a statement_timeout on the server)


def upstream_for(cfg: NodeConfig) -> Upstream:
    pg = cfg.postgresql
    server_tls = client_tls = None
    if pg.tls is not None:
        server_tls = server_context(TlsPaths(pg.tls.certfile, pg.tls.keyfile, None))
        server_tls.set_alpn_protocols(["postgresql"])  # what libpq 17+ offers
        # The gate connects to its own server at its own address: the certificate is checked
        # against the CA when there is one; the name is the server's, not necessarily this address.
        client_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client_tls.check_hostname = False
        if pg.tls.cafile is not None:
            load_ca(client_tls, pg.tls.cafile)
        else:
            client_tls.verify_mode = ssl.CERT_NONE
    return Upstream(local_host(pg.listen_address), pg.port, client_tls, server_tls)


def gate_for(cfg: NodeConfig, local: Callable[[], sql.ConnParams]) -> GateServer | None:
    """The gate the node file asks for (None without logical_gate_port), not started yet.
    `local`: how the agent reaches its server as the superuser (read the confirmed position)."""
    listen = gate_address(cfg)
    if listen is None:
        return None
    return GateServer(listen, upstream_for(cfg), lambda: sql.connect(local(), CLOCK_TIMEOUT))


def gate_address(cfg: NodeConfig) -> tuple[str, int] | None:
    """Where the node file asks the gate to listen (None without logical_gate_port): where
    PostgreSQL listens, on the gate's port."""
    port = cfg.postgresql.logical_gate_port
    if port is None:
        return None
    first = cfg.postgresql.listen_address.split(",")[0].strip()
    return ("0.0.0.0" if first in ("*", "") else first), port


def gate_process_for(cfg: NodeConfig, node_file: str, run_dir: Path) -> GateProcess | None:
    """The agent's handle on the gate's own process (gate/process.py), not started yet."""
    listen = gate_address(cfg)
    return None if listen is None else GateProcess(node_file, run_dir, listen)
