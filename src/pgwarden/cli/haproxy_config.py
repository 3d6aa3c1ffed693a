"""`pgwarden haproxy-config -c FILE`: print an HAProxy configuration for the cluster, with one
server per member the store knows (see `pgwarden.routing.haproxy`)."""

from __future__ import annotations

import argparse
import sys

from pgwarden.api.lag import parse_lag
from pgwarden.config.load import load_node_config
from pgwarden.errors import CliError, UsageError
from pgwarden.routing.haproxy import BALANCE_MODES, Listeners, backends_from_view, render

STORE_TIMEOUT = 5.0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("haproxy-config", help="print an HAProxy configuration for the cluster")
    p.add_argument("-c", "--config", required=True, metavar="FILE", help="a node's YAML file")
    p.add_argument("--bind", default="127.0.0.1", metavar="ADDR", help="listen address (127.0.0.1)")
    p.add_argument("--primary-port", type=int, default=5000, metavar="PORT",
                   help="read-write listener port (5000)")
    p.add_argument("--replica-port", type=int, default=5001, metavar="PORT",
                   help="read-only listener port (5001; 0 for none)")
    p.add_argument("--stats-port", type=int, default=0, metavar="PORT",
                   help="HAProxy stats page port (default: none)")
    p.add_argument("--max-lag", metavar="LAG",
                   help="replicas further behind than this (bytes or 16MB, ...) leave the read-only pool")
    p.add_argument("--balance", choices=BALANCE_MODES, default="roundrobin",
                   help="read-only balancing (roundrobin)")
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of standard output")
    p.set_defaults(func=run)


def listeners_from_args(args: argparse.Namespace, ca_file: str | None = None) -> Listeners:
    for flag, port in (("--primary-port", args.primary_port), ("--replica-port", args.replica_port),
                       ("--stats-port", args.stats_port)):
        if not 0 <= port <= 65535 or (flag == "--primary-port" and port == 0):
            raise UsageError(f"{flag}: not a port: {port}")
    if args.max_lag is not None:
        try:
            parse_lag(args.max_lag)
        except ValueError as e:
            raise UsageError(f"--max-lag: {e}") from None
        if any(c.isspace() for c in args.max_lag):
            raise UsageError("--max-lag: no spaces (it goes into a URL), e.g. 16MB")
    return Listeners(
        bind=args.bind, primary_port=args.primary_port, replica_port=args.replica_port or None,
        stats_port=args.stats_port or None, max_lag=args.max_lag, balance=args.balance,
        check_ca_file=ca_file,
    )


def run(args: argparse.Namespace) -> int:
    cfg = load_node_config(args.config)
    tls = cfg.restapi.tls  # https checks verify the members against the node file's CA
    ca = None if tls is None or tls.cafile is None else str(tls.cafile.absolute())
    lst = listeners_from_args(args, ca)
    from pgwarden.store.factory import open_store

    store = open_store(cfg.store, cfg.cluster)
    try:
        view = store.snapshot(STORE_TIMEOUT)
    finally:
        store.close()
    backends = backends_from_view(view)
    if not backends:
        raise CliError(f"the store knows no members of cluster {cfg.cluster} yet; are the agents running?")
    text = render(backends, lst, cfg.cluster)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0
