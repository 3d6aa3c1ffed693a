"""`pgwarden agent -c FILE`: run one node in the foreground until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse

from pgwarden.config.exposure import api_credentials
from pgwarden.config.load import load_node_config


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("agent", help="run one pgwarden node in the foreground")
    p.add_argument("-c", "--config", required=True, metavar="FILE", help="the node's YAML file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Validate before importing the agent, so a typo (or an unprotected REST API beyond loopback)
    # is reported the same way as by `ctl`.
    api_credentials(load_node_config(args.config), args.config)
    from pgwarden.agent.main import run_agent

    return int(run_agent(args.config))
