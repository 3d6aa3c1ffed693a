"""`pgwarden witness -c FILE`: run a raft member that votes but holds no PostgreSQL, so two data
nodes and a witness keep a majority when any one of the three is lost (store: raft only)."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from types import FrameType
from typing import Any

from pgwarden.api.messages import Request, Response, json_response
from pgwarden.api.service import HttpService, ServiceError
from pgwarden.config.witness import WitnessApiConfig, load_witness_config
from pgwarden.errors import CliError

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("witness", help="run a raft member that votes but holds no PostgreSQL")
    p.add_argument("-c", "--config", required=True, metavar="FILE", help="the witness' YAML file")
    p.set_defaults(func=run)


def health(status: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """HTTP status and body of GET /health: 200 while this member is in a group with a leader."""
    ok = status["role"] == "leader" or (status["leader"] is not None and status["has_quorum"])
    return (200 if ok else 503), {"role": "witness", "raft": status}


def run(args: argparse.Namespace) -> int:
    cfg = load_witness_config(args.config)
    logging.basicConfig(
        level=cfg.log.level.upper(), filename=cfg.log.file,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Imported here so `pgwarden --help` works without pysyncobj.
    from pgwarden.store.raft import acquire_node, release_node

    assert cfg.store.raft is not None
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # Created on the main thread: pysyncobj's tick thread lives as long as its creator.
    node = acquire_node(cfg.store.raft)
    server: HttpService | None = None
    try:
        if cfg.restapi is not None:
            server = _serve_health(cfg.restapi, node.status)
        log.info("witness %s of cluster %s: raft member at %s, partners %s", cfg.name, cfg.cluster,
                 cfg.store.raft.self_addr, ", ".join(cfg.store.raft.partner_addrs))
        while not stop.wait(1.0):
            pass
    finally:
        if server is not None:
            server.stop()
        release_node(node)
    return 0


def _serve_health(api: WitnessApiConfig, status: Any) -> HttpService:
    """GET/HEAD /health (and /) on the REST API's transport, with its connection cap and deadlines."""

    def dispatch(request: Request) -> Response:
        if request.path not in ("/health", "/"):
            return json_response(404, {"error": f"no such endpoint: {request.path}"})
        if request.method not in ("GET", "HEAD"):
            return json_response(405, {"error": f"method {request.method} is not allowed on {request.path}"},
                                 {"Allow": "GET,HEAD"})
        try:
            code, body = health(status())
        except Exception as e:  # the raft node is shutting down: not healthy, and no traceback
            log.debug("witness health: %s", e)
            code, body = 503, {"role": "witness", "error": "raft status unavailable"}
        return json_response(code, body)

    server = HttpService(api.listen_address, api.port, dispatch, max_connections=16)
    try:
        server.start()
    except ServiceError as e:
        raise CliError(f"witness health endpoint {e}") from None
    log.info("witness health at %s/health", server.url)
    return server
