"""`pgwarden local ...`: run a whole cluster on loopback (a store, N agents) for demos and tests.

Extra components for `local up` (a proxy, a pooler) plug in through UP_EXTENSIONS: modules that
add their own flags and return `Component`s to start after the agents.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, cast

from pgwarden.cli.output import UsageError, console, members_table, print_json
from pgwarden.local.cluster import STOP_TIMEOUT, STORES, LocalCluster, Options
from pgwarden.local.component import Component

# Each module defines `add_up_arguments(parser)` and `up_components(args, cluster) -> list[Component]`;
# modules not written yet are skipped.
UP_EXTENSIONS: tuple[str, ...] = ("pgwarden.local.haproxy", "pgwarden.local.pgbouncer")


class UpExtension(Protocol):
    def add_up_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def up_components(self, args: argparse.Namespace, cluster: LocalCluster) -> Sequence[Component]: ...


def _extensions() -> list[UpExtension]:
    return [
        cast(UpExtension, importlib.import_module(name))
        for name in UP_EXTENSIONS
        if importlib.util.find_spec(name) is not None
    ]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    local = sub.add_parser("local", help="run a cluster on loopback for demos and tests")
    cmds = local.add_subparsers(dest="local_command", metavar="COMMAND", required=True)

    def with_dir(name: str, help: str) -> argparse.ArgumentParser:
        p = cmds.add_parser(name, help=help)
        p.add_argument("--dir", required=True, type=Path, metavar="DIR", help="the cluster's directory")
        return p

    p = with_dir("up", "create and start a cluster (or start a stopped one)")
    p.add_argument("--nodes", type=int, default=3, metavar="N", help="number of nodes (default 3)")
    p.add_argument("--sync", choices=("on", "quorum"), help="synchronous_mode")
    p.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                   help="a cluster setting to seed (repeatable), as for `ctl edit-config`")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the cluster (120)")
    p.add_argument("--store", choices=STORES, default=None,
                   help="coordination: one etcd (default), one ZooKeeper, or raft among the agents")
    p.add_argument("--standby-of", type=Path, metavar="DIR", default=None,
                   help="make this a standby site of the local cluster in DIR (docs/multi-site.md)")
    p.add_argument("--witness", action="store_true",
                   help="raft only: add a voting member without PostgreSQL (e.g. --nodes 2 --witness)")
    p.add_argument("--bin-dir", type=Path, metavar="PATH",
                   help="PostgreSQL binaries to run (e.g. /usr/lib/postgresql/15/bin); "
                        "default: the embedded ones")
    p.add_argument("--tls", action="store_true",
                   help="make a local CA and node certificates: REST API on https, PostgreSQL and "
                        "replication over TLS (verify-full)")
    for ext in _extensions():
        ext.add_up_arguments(p)
    p.set_defaults(local_func=cmd_up)

    p = with_dir("status", "members of the local cluster, stopped ones included")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(local_func=cmd_status)

    p = with_dir("dsn", "a libpq multi-host connection string (last line)")
    p.add_argument("--replicas", action="store_true", help="prefer standbys instead of the primary")
    p.add_argument("--via", choices=("haproxy", "pgbouncer"),
                   help="through the cluster's HAProxy or PgBouncer instead of multi-host libpq")
    p.set_defaults(local_func=cmd_dsn)

    for name, help, func in (("stop", "stop one node (or the store, or the witness)", cmd_stop),
                             ("start", "start one stopped node (or the store, or the witness) again",
                              cmd_start)):
        p = with_dir(name, help)
        p.add_argument("node", metavar="NODE")
        if name == "stop":
            p.add_argument("--timeout", type=float, default=STOP_TIMEOUT, help=argparse.SUPPRESS)
        p.set_defaults(local_func=func)

    p = with_dir("down", "stop everything the cluster started")
    p.add_argument("--timeout", type=float, default=STOP_TIMEOUT, help=argparse.SUPPRESS)
    p.set_defaults(local_func=cmd_down)

    p = with_dir("upgrade", "online major-version upgrade behind PgBouncer (docs/upgrade.md)")
    p.add_argument("--bin-dir", type=Path, metavar="PATH",
                   help="the new PostgreSQL binaries (default: the embedded ones)")
    p.add_argument("--nodes", type=int, metavar="N", help="nodes of the new cluster (default: as the old)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="only check what cannot be moved; change nothing")
    mode.add_argument("--rollback", action="store_true",
                      help="before --finish: back to the old cluster, new writes kept")
    mode.add_argument("--finish", action="store_true", help="retire the old cluster")
    p.add_argument("--timeout", type=float, default=600.0,
                   help="seconds to wait for the new cluster to start and to catch up (600)")
    p.set_defaults(local_func=cmd_upgrade)

    local.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # kazoo reports every dropped connection it then re-establishes as a warning; with no
    # logging configured those would land between our output lines.
    logging.getLogger("kazoo").setLevel(logging.ERROR)
    cluster = LocalCluster(args.dir)
    try:
        return int(args.local_func(args, cluster))
    finally:
        cluster.close()


def _print_members(cluster: LocalCluster) -> None:
    state = cluster.current_state()
    view = cluster.view(1.0)  # member_rows has just read it
    paused = " (paused)" if view is not None and view.settings.paused else ""
    console().print(members_table(cluster.member_rows(),
                                  f"Cluster: {state.cluster}{paused} ({cluster.directory})"))


def cmd_up(args: argparse.Namespace, cluster: LocalCluster) -> int:
    if args.nodes < 1:
        raise UsageError(f"--nodes must be at least 1, got {args.nodes}")
    extras: list[Component] = []
    for ext in _extensions():
        extras.extend(ext.up_components(args, cluster))
    opts = Options(nodes=args.nodes, sync=args.sync, assignments=tuple(args.assignments),
                   timeout=args.timeout, store=args.store, witness=args.witness, tls=args.tls,
                   bin_dir=args.bin_dir, standby_of=args.standby_of)
    cluster.up(opts, extras)
    _print_members(cluster)
    for line in cluster.components_summary():
        print(line)
    view = cluster.view(0)
    if args.standby_of is not None or (view is not None and view.settings.standby_cluster is not None):
        print("Standby site: read-only until `pgwarden ctl promote-cluster`; connection string:")
        print(cluster.dsn(replicas=True))
        return 0
    print("Read-write connection string (reaches the primary wherever it runs):")
    print(cluster.dsn())
    return 0


def cmd_status(args: argparse.Namespace, cluster: LocalCluster) -> int:
    if args.format == "json":
        print_json({"members": cluster.member_rows()})
        return 0
    _print_members(cluster)
    for line in cluster.components_summary():
        print(line)
    return 0


def cmd_dsn(args: argparse.Namespace, cluster: LocalCluster) -> int:
    via = getattr(args, "via", None)
    if via is not None:
        return _dsn_via(via, args.replicas, cluster)
    dsn = cluster.dsn(replicas=args.replicas)
    if args.replicas:
        print("Read-only connection string (a standby when one is up, else the primary):")
    else:
        print("Read-write connection string (reaches the primary wherever it runs):")
    print(dsn)
    return 0


def _dsn_via(via: str, replicas: bool, cluster: LocalCluster) -> int:
    if via == "haproxy":
        from pgwarden.local import haproxy

        dsn = haproxy.dsn(cluster, replicas)
        print(f"Through HAProxy's {'read-only (replicas)' if replicas else 'read-write (primary)'} listener:")
    else:
        if replicas:
            raise UsageError("--replicas with --via pgbouncer: PgBouncer sends only to the primary")
        from pgwarden.local import pgbouncer

        dsn = pgbouncer.dsn(cluster)
        print("Through PgBouncer (kept pointed at the primary by the agents):")
    print(dsn)
    return 0


def cmd_stop(args: argparse.Namespace, cluster: LocalCluster) -> int:
    cluster.stop(args.node, args.timeout)
    return 0


def cmd_start(args: argparse.Namespace, cluster: LocalCluster) -> int:
    cluster.start(args.node)
    return 0


def cmd_down(args: argparse.Namespace, cluster: LocalCluster) -> int:
    cluster.down(args.timeout)
    return 0


def cmd_upgrade(args: argparse.Namespace, cluster: LocalCluster) -> int:
    from pgwarden.upgrade.run import Request, main

    if args.nodes is not None and args.nodes < 1:
        raise UsageError(f"--nodes must be at least 1, got {args.nodes}")
    mode = "rollback" if args.rollback else "finish" if args.finish else "upgrade"
    return main(cluster, Request(mode, args.check, args.bin_dir, args.nodes, args.timeout))
