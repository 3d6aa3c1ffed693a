"""`pgwarden ctl reinit NODE`: ask the member's agent to wipe its data and clone it again
(POST /reinitialize), then wait until it streams again, with the base backup's progress from the
source's pg_stat_progress_basebackup (backup_progress.py). `--no-wait` returns once the agent
accepted the request.

The member counts as back once it runs as a replica that streams, with a postmaster other than
the one it had before (or after it was seen down): its old state, still published until its
agent acts on the request, must not pass for the new one.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from typing import Any

import urllib3

from pgwarden.cli.ctl_context import STORE_TIMEOUT, Ctx, confirm, superuser_credentials
from pgwarden.cli.member_api import api_headers, member_api_url, post_action
from pgwarden.config.schema import NodeConfig
from pgwarden.core.model import ClusterView, MemberInfo
from pgwarden.errors import CliError
from pgwarden.postgres.backup_progress import BackupPoller, Bars, plain_line, view_row
from pgwarden.postgres.sql import ConnParams
from pgwarden.report import ssl_options
from pgwarden.store.base import StoreUnavailable
from pgwarden.tls.http import api_pool

REINIT_TIMEOUT = 600.0
POLL_INTERVAL = 0.5
HTTP_TIMEOUT = 2.0


def register(cmds: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = cmds.add_parser("reinit", help="wipe a replica's data and clone it again")
    p.add_argument("node", metavar="NODE")
    p.add_argument("--force", action="store_true", help="do not ask for confirmation")
    p.add_argument("--no-wait", action="store_true",
                   help="return once the member accepted the request, without waiting for it to stream")
    p.add_argument("--timeout", type=float, default=REINIT_TIMEOUT, metavar="SECONDS",
                   help=f"how long to wait for the member to stream again (default {REINIT_TIMEOUT:g})")
    p.set_defaults(ctl_func=cmd_reinit)


@dataclass(frozen=True)
class Seen:
    """The member as its /status (or, when that does not answer, the store) shows it."""

    role: str
    state: str
    running: bool
    streaming: bool
    postmaster_pid: int | None
    upstream: str | None = None
    pg_log: str = ""
    start_error: str = ""
    message: str = ""  # what its agent's loop last decided


def seen_from_status(body: Any) -> Seen | None:
    if not isinstance(body, dict) or not isinstance(body.get("state"), str):
        return None
    pid = body.get("postmaster_pid")
    return Seen(role=str(body.get("role")), state=body["state"], running=body.get("running") is True,
                streaming=body.get("replication_state") == "streaming",
                postmaster_pid=pid if isinstance(pid, int) else None,
                upstream=body.get("upstream") if isinstance(body.get("upstream"), str) else None,
                pg_log=str(body.get("postgresql_log") or ""), start_error=str(body.get("start_error") or ""),
                message=str(body.get("message") or ""))


def seen_from_member(m: MemberInfo) -> Seen:
    return Seen(role=m.role.value, state=m.state, running=m.running, streaming=m.streaming,
                postmaster_pid=m.postmaster_pid, upstream=m.upstream)


def is_up(seen: Seen) -> bool:
    return seen.running and seen.state == "running"


def streams_again(seen: Seen, pid_before: int | None, went_down: bool) -> bool:
    """Back as a streaming replica, and not the state from before the reinit still showing."""
    fresh = went_down or (seen.postmaster_pid is not None and seen.postmaster_pid != pid_before)
    return fresh and is_up(seen) and seen.role == "replica" and seen.streaming


def refused(seen: Seen | None) -> str | None:
    """The agent's loop turned the request down (core/commands.py): its reason."""
    if seen is not None and seen.message.startswith("reinitialize refused"):
        return seen.message
    return None


def clone_source(seen: Seen | None, view: ClusterView | None) -> MemberInfo | None:
    """The member the base backup comes from: the one the state names (`cloning from X`),
    else the leader."""
    if view is None:
        return None
    name = view.leader.name if view.leader is not None else None
    if seen is not None and seen.state.startswith("cloning from "):
        name = seen.state.removeprefix("cloning from ").strip()
    return view.members.get(name) if name else None


def describe(seen: Seen | None) -> str:
    if seen is None:
        return "publishing no state (is its agent running?)"
    what = f"{seen.role}, {seen.state}"
    if seen.role == "replica" and is_up(seen) and not seen.streaming:
        what += ", not streaming"
    return what + (f"; PostgreSQL did not start: {seen.start_error}" if seen.start_error else "")


# -- the command -----------------------------------------------------------------------------------


def cmd_reinit(args: argparse.Namespace, ctx: Ctx) -> int:
    view = ctx.snapshot()
    api = member_api_url(view, args.node, ctx.cfg.cluster)
    headers = api_headers(ctx.cfg, ctx.path)  # an unreadable password_file fails before the question
    confirm(f"Wipe {args.node}'s data directory and clone it again?", args.force, f"reinit {args.node}")
    before = view.members[args.node].postmaster_pid
    status = _get_json(ctx.cfg, api + "/status", headers)
    if status is not None and isinstance(status.get("postmaster_pid"), int):
        before = status["postmaster_pid"]
    body = post_action(api + "/reinitialize", args.node, headers, ctx.path, tls=ctx.cfg.restapi.client_tls())
    print(f"{args.node}: {body.get('message') or 'reinitialising'}", flush=True)
    if args.no_wait:
        return 0
    if args.timeout <= 0:
        raise CliError(f"--timeout must be positive, got {args.timeout:g}")
    return wait_streaming(ctx, args.node, api, headers, before, args.timeout)


def wait_streaming(ctx: Ctx, node: str, api: str, headers: dict[str, str], pid_before: int | None,
                   timeout: float) -> int:
    started = time.monotonic()
    deadline = started + timeout
    went_down = False
    seen: Seen | None = None
    poller: BackupPoller | None = None
    last_text = ""
    try:
        with Bars() as bars:
            while True:
                view = _snapshot(ctx)
                seen = seen_from_status(_get_json(ctx.cfg, api + "/status", headers))
                if seen is None and view is not None and node in view.members:
                    seen = seen_from_member(view.members[node])
                if seen is not None and streams_again(seen, pid_before, went_down):
                    bars.finish(node, f"{node}: streaming")
                    break
                why = refused(seen)  # best effort: the message shows until its next loop
                if why is not None:
                    raise CliError(f"{node}: {why}")
                went_down = went_down or (seen is not None and not is_up(seen))
                poller = _poller_for(ctx.cfg, poller, clone_source(seen, view), node)
                backup = poller.poll().get(node) if poller is not None else None
                state = seen.state if seen is not None else None
                if seen is not None and not went_down and seen.postmaster_pid == pid_before:
                    state = f"{seen.state}; waiting for its agent to act on the request"
                row = view_row(node, state, backup)
                bars.show(row)
                if not bars.live and row.text != last_text:  # scripts and logs: a line per change
                    print(f"  {time.monotonic() - started:5.1f} s: {plain_line(row)}", flush=True)
                last_text = row.text
                if time.monotonic() >= deadline:
                    log = f"its PostgreSQL log {seen.pg_log}" if seen is not None and seen.pg_log \
                        else "its PostgreSQL log"
                    raise CliError(
                        f"{node} did not come back as a streaming replica within {timeout:g} s: it is "
                        f"{describe(seen)}; see {log} and its agent's log on its host "
                        f"(`pgwarden ctl explain --member {node}` shows its decisions)")
                time.sleep(POLL_INTERVAL)
    finally:
        if poller is not None:
            poller.close()
    took = time.monotonic() - started
    upstream = f"; streaming from {seen.upstream}" if seen.upstream else "; streaming"
    print(f"{node}: reinitialized in {took:.1f} s{upstream}")
    return 0


def _poller_for(cfg: NodeConfig, poller: BackupPoller | None, source: MemberInfo | None,
                node: str) -> BackupPoller | None:
    """The poller of `source`: the one we have while the source stays, a new one when it moved."""
    if source is None or source.name == node:
        return poller
    if poller is not None and (poller.params.host, poller.params.port) == (source.host, source.port):
        return poller
    if poller is not None:
        poller.close()
    return BackupPoller(_superuser_params(cfg, source))


def _snapshot(ctx: Ctx) -> ClusterView | None:
    try:
        return ctx.store.snapshot(STORE_TIMEOUT)
    except StoreUnavailable:
        return None


def _superuser_params(cfg: NodeConfig, source: MemberInfo) -> ConnParams:
    """As `ctl dsn` connects: the node file's superuser, its TLS options."""
    user, password = superuser_credentials(cfg)
    return ConnParams(host=source.host, port=source.port, user=user, password=password,
                      application_name="pgwarden-ctl", ssl=tuple(ssl_options(cfg.postgresql.tls).items()))


def _get_json(cfg: NodeConfig, url: str, headers: dict[str, str]) -> dict[str, Any] | None:
    http = api_pool(cfg.restapi.client_tls(), retries=False, timeout=urllib3.Timeout(HTTP_TIMEOUT))
    try:
        resp = http.request("GET", url, headers=headers)
        body = json.loads(resp.data) if resp.status == 200 else None
    except (urllib3.exceptions.HTTPError, ValueError):
        return None
    return body if isinstance(body, dict) else None
