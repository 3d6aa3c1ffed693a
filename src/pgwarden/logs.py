"""Logging for a node's processes (the agent and its logical gate): the node file's level, to its
log file when it names one (both processes append to it), else to standard error."""

from __future__ import annotations

import logging

from pgwarden.config.schema import NodeConfig


def setup_logging(cfg: NodeConfig) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if cfg.log.file is not None:
        handlers = [logging.FileHandler(cfg.log.file)]
    logging.basicConfig(
        level=cfg.log.level.upper(), handlers=handlers, force=True,
        format=f"%(asctime)s %(levelname)s {cfg.name} %(name)s: %(message)s",
    )
    if cfg.log.level.upper() != "DEBUG":
        # Health checks from HAProxy and peers arrive every second: log requests only when debugging.
        logging.getLogger("pgwarden.api.access").setLevel(logging.WARNING)
