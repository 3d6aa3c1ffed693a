"""`pgwarden agent -c FILE`: load the node file, take the single-agent lock, set up logging and
signals, and run the Agent in the foreground until SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

from pgwarden.agent.runner import Agent
from pgwarden.agent.single import AlreadyRunning, hold_run_dir, run_dir_for
from pgwarden.config.errors import ConfigError
from pgwarden.config.exposure import api_credentials
from pgwarden.config.load import load_node_config
from pgwarden.gate.start import gate_process_for
from pgwarden.logs import setup_logging

log = logging.getLogger("pgwarden.agent")


def run_agent(config_path: str) -> int:
    """`pgwarden agent -c FILE`: run one node in the foreground until SIGTERM/SIGINT."""
    try:
        cfg = load_node_config(config_path)
        api_auth = api_credentials(cfg, config_path)
    except ConfigError as e:
        raise SystemExit(f"pgwarden: error: {e}") from None
    try:
        lock = hold_run_dir(run_dir_for(cfg))  # held until this process ends
    except (AlreadyRunning, OSError) as e:
        raise SystemExit(f"pgwarden: error: {e}") from None
    setup_logging(cfg)
    agent = Agent(cfg, api_auth)
    gate = gate_process_for(cfg, config_path, run_dir_for(cfg))  # postgresql.logical_gate_port
    if gate is not None:
        try:
            gate.start()
        except OSError as e:
            lock.close()
            hint = "; give the gate a free port" if "cannot listen" in str(e) else ""
            raise SystemExit(f"pgwarden: error: postgresql.logical_gate_port {gate.listen[1]}: "
                             f"{e}{hint}") from None
        agent.gate = gate

    def _stop(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        agent.stop()

    def _reload(signum: int, frame: FrameType | None) -> None:
        # Off the signal handler: reloading takes locks the interrupted code may hold.
        threading.Thread(target=agent.reload_tls, name="pgwarden-sighup", daemon=True).start()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGHUP, _reload)
    try:
        return agent.run()
    finally:
        if gate is not None:
            gate.stop()
        lock.close()
