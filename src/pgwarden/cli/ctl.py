"""`pgwarden ctl -c FILE <command>`: operator commands against a running cluster, through the
store (list, switchover, failover, pause, resume, history, configuration) or a member's REST API
(restart, reinit: member_api.py, with the node file's REST API credentials; reinit's wait in
reinit.py).
"""

from __future__ import annotations

import argparse
import difflib
import sys
import time
from collections.abc import Callable
from datetime import datetime

import yaml

from pgwarden.cli import explain
from pgwarden.cli.ctl_context import (
    STORE_TIMEOUT,
    SWITCHOVER_TIMEOUT,
    Ctx,
    confirm,
    store_hosts,
    store_what,
    superuser_credentials,
    update_settings,
)
from pgwarden.cli.member_api import api_headers, member_api_url, post_action
from pgwarden.cli.output import (
    CliError,
    UsageError,
    console,
    history_table,
    libpq_dsn,
    member_rows,
    members_table,
    print_json,
    topology_tree,
)
from pgwarden.cli.param_check import ParameterCheck
from pgwarden.config.load import apply_settings, load_node_config, replace, to_data
from pgwarden.config.schema import ClusterSettings
from pgwarden.core.model import ClusterView, FailoverRequest, Role
from pgwarden.report import redact, ssl_options
from pgwarden.store.base import StoreUnavailable
from pgwarden.store.cluster import ClusterStore

# -- argument parsing ----------------------------------------------------------------------------


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ctl = sub.add_parser("ctl", help="operate a running cluster")
    ctl.add_argument("-c", "--config", required=True, metavar="FILE", help="a node's YAML file")
    cmds = ctl.add_subparsers(dest="ctl_command", metavar="COMMAND", required=True)

    p = cmds.add_parser("list", help="members and their state")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(ctl_func=cmd_list)

    p = cmds.add_parser("switchover", help="planned change of primary")
    p.add_argument("--leader", help="the current primary (checked)")
    p.add_argument("--candidate", help="the member to promote (default: the best replica)")
    p.add_argument("--scheduled", metavar="T", help="when, ISO 8601 (e.g. 2030-01-01T03:00+00:00) or 'now'")
    p.add_argument("--force", action="store_true", help="do not ask for confirmation")
    p.add_argument("--timeout", type=float, default=SWITCHOVER_TIMEOUT, help=argparse.SUPPRESS)
    p.set_defaults(ctl_func=cmd_switchover)

    p = cmds.add_parser("failover", help="promote a chosen member (also with no healthy primary)")
    p.add_argument("--candidate", required=True, help="the member to promote")
    p.add_argument("--force", action="store_true", help="do not ask for confirmation")
    p.add_argument("--timeout", type=float, default=SWITCHOVER_TIMEOUT, help=argparse.SUPPRESS)
    p.set_defaults(ctl_func=cmd_failover)

    p = cmds.add_parser("restart", help="restart a member's PostgreSQL")
    p.add_argument("node", metavar="NODE")
    p.set_defaults(ctl_func=cmd_restart)

    from pgwarden.cli import reinit  # it builds on this module (confirm)

    reinit.register(cmds)

    p = cmds.add_parser("pause", help="maintenance mode: no automatic failover")
    p.set_defaults(ctl_func=cmd_pause)
    p = cmds.add_parser("resume", help="leave maintenance mode")
    p.set_defaults(ctl_func=cmd_resume)

    p = cmds.add_parser("history", help="timeline history")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(ctl_func=cmd_history)

    p = cmds.add_parser("show-config", help="the cluster-wide settings (YAML)")
    p.set_defaults(ctl_func=cmd_show_config)

    p = cmds.add_parser("edit-config", help="change cluster-wide settings")
    p.add_argument("--set", dest="assignments", action="append", required=True, metavar="KEY=VALUE",
                   help="a setting to change (repeatable); parameters.NAME=VALUE for PostgreSQL")
    p.set_defaults(ctl_func=cmd_edit_config)

    p = cmds.add_parser("topology", help="replication tree")
    p.set_defaults(ctl_func=cmd_topology)

    p = cmds.add_parser("dsn", help="a libpq multi-host connection string")
    p.add_argument("--replicas", action="store_true", help="prefer standbys instead of the primary")
    p.add_argument("--logical", action="store_true",
                   help="through the members' logical gates (postgresql.logical_gate_port): for "
                        "subscriptions to a PostgreSQL 15/16 source in synchronous mode")
    p.add_argument("--with-password", action="store_true",
                   help="put the superuser's password in the string (left out by default: ctl output "
                        "never shows a secret unless asked; clients can use ~/.pgpass or PGPASSWORD)")
    p.set_defaults(ctl_func=cmd_dsn)
    explain.register(cmds)  # explain, replay

    from pgwarden.cli import (
        logical,  # it builds on this module
        site_peers,  # site-peers
        sites,  # promote-cluster, demote-cluster, site-switchover
    )

    logical.register(cmds)
    sites.register(cmds)
    site_peers.register(cmds)
    ctl.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = load_node_config(args.config)
    ctx = Ctx(cfg, args.config)
    func: Callable[[argparse.Namespace, Ctx], int] = args.ctl_func
    try:
        return func(args, ctx)
    except StoreUnavailable as e:
        raise CliError(f"cannot reach the store at {store_hosts(cfg.store)}: {e}; "
                       f"{store_what(cfg.store)}") from None
    finally:
        ctx.close()


# -- reading ---------------------------------------------------------------------------------------


def cmd_list(args: argparse.Namespace, ctx: Ctx) -> int:
    view = ctx.snapshot()
    rows = member_rows(view)
    if args.format == "json":
        print_json(rows)
        return 0
    title = f"Cluster: {ctx.cfg.cluster}" + (" (paused)" if view.settings.paused else "")
    console().print(members_table(rows, title))
    if view.failover is not None:
        print(f"pending {view.failover.kind}: {_describe_request(view.failover)}")
    return 0


def cmd_history(args: argparse.Namespace, ctx: Ctx) -> int:
    view = ctx.snapshot()
    if args.format == "json":
        print_json([
            {"timeline": e.timeline, "switch_lsn": e.switch_lsn, "reason": e.reason, "at": e.at,
             "new_leader": e.new_leader}
            for e in view.history
        ])
        return 0
    if not view.history:
        print("no timeline history yet (the cluster has not changed primary)")
        return 0
    console().print(history_table(view.history))
    return 0


def settings_yaml(settings: ClusterSettings) -> str:
    """The settings as shown (show-config, edit-config's diff): a subscription's source password
    is masked, since ctl output never shows a secret."""
    data = to_data(settings)
    for sub in data.get("subscriptions") or []:
        sub["source"] = redact(sub["source"])
    return yaml.safe_dump(data, sort_keys=True, default_flow_style=False)


def cmd_show_config(args: argparse.Namespace, ctx: Ctx) -> int:
    sys.stdout.write(settings_yaml(ctx.snapshot().settings))
    return 0


def cmd_topology(args: argparse.Namespace, ctx: Ctx) -> int:
    view = ctx.snapshot()
    if not view.members:
        print(f"cluster {ctx.cfg.cluster}: no members published")
        return 0
    console().print(topology_tree(view, f"Cluster: {ctx.cfg.cluster}"))
    return 0


def cmd_dsn(args: argparse.Namespace, ctx: Ctx) -> int:
    view = ctx.snapshot()
    if args.logical:
        if args.replicas:
            raise UsageError("--logical reaches the primary (a subscription needs it); drop --replicas")
        hosts = sorted((m.host, m.logical_gate_port) for m in view.members.values() if m.logical_gate_port)
        if not hosts:
            raise CliError(f"no member of cluster {ctx.cfg.cluster} runs a logical gate: set "
                           f"postgresql.logical_gate_port in each node file and restart its agent")
    else:
        hosts = sorted((m.host, m.port) for m in view.members.values())
    if not hosts:  # nobody published: at least this node's own address
        hosts = [ctx.cfg.postgresql.connect_host_port()]
    user, password = superuser_credentials(ctx.cfg)
    print(libpq_dsn(hosts, user, password if args.with_password else "", replicas=args.replicas,
                    ssl=ssl_options(ctx.cfg.postgresql.tls)))
    return 0


# -- cluster settings (compare-and-swap with retry) -----------------------------------------------


def _set_paused(ctx: Ctx, paused: bool) -> int:
    before, _ = update_settings(ctx.store, lambda s: replace(s, paused=paused))
    word = "paused" if paused else "resumed"
    if before.paused == paused:
        print(f"cluster {ctx.cfg.cluster} is already {'paused' if paused else 'not paused'}")
    else:
        print(f"cluster {ctx.cfg.cluster} {word}"
              + (": no automatic failover until `pgwarden ctl resume`" if paused else ""))
    return 0


def cmd_pause(args: argparse.Namespace, ctx: Ctx) -> int:
    return _set_paused(ctx, True)


def cmd_resume(args: argparse.Namespace, ctx: Ctx) -> int:
    return _set_paused(ctx, False)


def cmd_edit_config(args: argparse.Namespace, ctx: Ctx) -> int:
    assignments: list[str] = args.assignments
    check = ParameterCheck(ctx.cfg, ctx.snapshot)  # values a PostgreSQL would refuse are not stored

    def change(s: ClusterSettings) -> ClusterSettings:
        new = apply_settings(s, assignments)
        check(s, new)
        return new

    before, after = update_settings(ctx.store, change)
    if before == after:
        print("no changes")
        return 0
    diff = difflib.unified_diff(
        settings_yaml(before).splitlines(keepends=True),
        settings_yaml(after).splitlines(keepends=True),
        "before", "after",
    )
    sys.stdout.write("".join(diff))
    return 0


# -- switchover / failover -----------------------------------------------------------------------


def parse_when(text: str | None, now_wall: float) -> float | None:
    """`--scheduled`: ISO 8601 (a time without a zone is local time) or 'now'."""
    if text is None or text.strip().lower() == "now":
        return None
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(
            f"--scheduled: cannot read '{text}' as a time; use ISO 8601 like 2030-01-01T03:00:00+00:00"
        ) from None
    return when.timestamp()


def _describe_request(r: FailoverRequest) -> str:
    parts = [f"from {r.leader}" if r.leader else "",
             f"to {r.candidate}" if r.candidate else "to the best replica"]
    if r.scheduled_at:
        when = datetime.fromtimestamp(r.scheduled_at).astimezone()
        parts.append("at " + when.isoformat(timespec="seconds"))
    return " ".join(p for p in parts if p)


def submit_request(ctx: Ctx, view: ClusterView, request: FailoverRequest, force: bool, timeout: float) -> int:
    pending = view.failover
    confirm(f"{request.kind.capitalize()} {_describe_request(request)}?", force, request.kind)
    token = pending.token if pending is not None else None
    if not ctx.store.set_failover(request, token, STORE_TIMEOUT):
        raise CliError("another switchover or failover request was written meanwhile; "
                       "check `pgwarden ctl list` and try again")
    if request.scheduled_at is not None and request.scheduled_at > time.time() + 1:
        print(f"{request.kind} scheduled: {_describe_request(request)}")
        return 0
    old = view.leader.name if view.leader is not None else None
    return wait_for_new_primary(ctx.store, request, old, timeout)


def _done(view: ClusterView, request: FailoverRequest, old_leader: str | None) -> str | None:
    """The new primary's name once the lease names the right member and it runs as primary."""
    if view.leader is None:
        return None
    name = view.leader.name
    if request.candidate is not None and name != request.candidate:
        return None
    if request.candidate is None and name == old_leader:
        return None
    m = view.members.get(name)
    if m is None or m.role != Role.PRIMARY or not m.running:
        return None
    return name


def _dropped(view: ClusterView, old_leader: str | None) -> bool:
    """The request is gone and the leader is the one it was filed under: the leader dropped it."""
    return view.failover is None and view.leader is not None and view.leader.name == old_leader


def _same_request(a: FailoverRequest, b: FailoverRequest) -> bool:
    return (a.kind, a.leader, a.candidate, a.scheduled_at) == (b.kind, b.leader, b.candidate, b.scheduled_at)


def _superseded(view: ClusterView, request: FailoverRequest, old_leader: str | None) -> str | None:
    """Why our request lost to another one, if it did: a different request now sits in the
    store, or the leadership moved to someone other than our candidate with no request left."""
    if view.failover is not None and not _same_request(view.failover, request):
        return f"another request replaced it ({view.failover.kind} {_describe_request(view.failover)})"
    leader = view.leader.name if view.leader is not None else None
    if (view.failover is None and request.candidate is not None and leader is not None
            and leader not in (old_leader, request.candidate)):
        return f"{leader} leads now, not {request.candidate} (the request was given up or replaced)"
    return None


def wait_for_new_primary(
    store: ClusterStore, request: FailoverRequest, old_leader: str | None, timeout: float
) -> int:
    started = time.monotonic()
    deadline = started + timeout
    target = request.candidate or "another member"
    print(f"{request.kind} requested; waiting up to {timeout:g} s for {target} to run as primary")
    last_seen: tuple[str | None, str | None] | None = None
    view: ClusterView | None = None
    while True:
        try:
            view = store.snapshot(STORE_TIMEOUT)
        except StoreUnavailable:
            view = None
        if view is not None:
            done = _done(view, request, old_leader)
            if done is not None:
                took = time.monotonic() - started
                print(f"{request.kind} complete after {took:.1f} s: {done} is the primary")
                return 0
            leader = view.leader.name if view.leader else None
            if _dropped(view, old_leader):
                break  # no use waiting out the timeout
            other = _superseded(view, request, old_leader)
            if other is not None:
                raise CliError(f"{request.kind} did not happen as asked: {other}; "
                               f"check `pgwarden ctl list`")
            state = None
            if leader is not None and leader in view.members:
                m = view.members[leader]
                state = f"{m.role.value}/{m.state}"
            if (leader, state) != last_seen:
                last_seen = (leader, state)
                what = f"leader {leader} ({state})" if leader else "no leader"
                print(f"  {time.monotonic() - started:5.1f} s: {what}")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            store.wait_for_change(min(1.0, remaining))
        except StoreUnavailable:
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
    leader = view.leader.name if view is not None and view.leader is not None else None
    pending = view is not None and view.failover is not None
    if view is not None and _dropped(view, old_leader):
        raise CliError(
            f"{request.kind} did not happen: the leader {leader} dropped the request because "
            f"{f'{request.candidate} could not' if request.candidate else 'no replica could'} take over "
            f"(its log says why); "
            f"check `pgwarden ctl list` and try again"
        )
    raise CliError(
        f"{request.kind} did not complete within {timeout:g} s: the leader is "
        f"{leader or 'nobody'}; the request is {'still pending' if pending else 'no longer in the store'} "
        f"(see `pgwarden ctl list` and the agents' logs)"
    )


def cmd_switchover(args: argparse.Namespace, ctx: Ctx) -> int:
    from pgwarden.core.requests import validate_switchover

    now = time.time()
    scheduled = parse_when(args.scheduled, now)
    view = ctx.snapshot()
    leader = args.leader if args.leader is not None else (view.leader.name if view.leader else None)
    request = validate_switchover(view, leader, args.candidate, scheduled, now)
    return submit_request(ctx, view, request, args.force, args.timeout)


def cmd_failover(args: argparse.Namespace, ctx: Ctx) -> int:
    from pgwarden.core.requests import validate_failover

    view = ctx.snapshot()
    request = validate_failover(view, args.candidate, time.time())
    return submit_request(ctx, view, request, args.force, args.timeout)


# -- a member's REST API ---------------------------------------------------------------------------


def cmd_restart(args: argparse.Namespace, ctx: Ctx) -> int:
    url = member_api_url(ctx.snapshot(), args.node, ctx.cfg.cluster) + "/restart"
    body = post_action(url, args.node, api_headers(ctx.cfg, ctx.path), ctx.path,
                       tls=ctx.cfg.restapi.client_tls())
    print(f"{args.node}: {body.get('message') or 'restarted'}")
    return 0
