"""`pgwarden upgrade --from OLD.yaml --to NEW.yaml`: the online major-version upgrade of
`pgwarden local upgrade` for clusters the operator runs (docs/upgrade.md)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("upgrade", help="online major-version upgrade to a new cluster you run, "
                                       "behind PgBouncer (docs/upgrade.md)")
    p.add_argument("--from", dest="from_file", required=True, type=Path, metavar="OLD.yaml",
                   help="a node file of the old (running) cluster, whose pgbouncer: section names "
                        "the PgBouncer clients use")
    p.add_argument("--to", dest="to_file", required=True, type=Path, metavar="NEW.yaml",
                   help="a node file of the new cluster (empty, on the newer major, same PgBouncer)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="only check what is in the way; change nothing")
    mode.add_argument("--rollback", action="store_true",
                      help="before --finish: back to the old cluster, new writes kept")
    mode.add_argument("--finish", action="store_true",
                      help="drop the reverse replication (the old cluster is left running)")
    p.add_argument("--timeout", type=float, default=600.0,
                   help="seconds to wait for the new cluster's primary and for it to catch up (600)")
    p.set_defaults(func=cmd_upgrade)


def cmd_upgrade(args: argparse.Namespace) -> int:
    from pgwarden.upgrade.flow import Request
    from pgwarden.upgrade.nodefile import main

    logging.getLogger("kazoo").setLevel(logging.ERROR)
    mode = "rollback" if args.rollback else "finish" if args.finish else "upgrade"
    return main(args.from_file, args.to_file, Request(mode, args.check, None, None, args.timeout))
