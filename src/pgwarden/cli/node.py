"""`pgwarden node -c FILE <command>`: work on one node by hand while its agent is stopped, in every
store mode: `clone` (wipe and copy the leader), `promote`, `follow --upstream X` and `rejoin`
(pg_rewind onto the leader, else clone again).

Each command first checks that it is safe and refuses with one line and a non-zero exit when it
is not: while the node's agent runs, the agent owns PostgreSQL (two owners would fight over it);
promoting while another primary may still take writes would make two writable primaries
(SAFETY, the first promise); following a member on a timeline this node forked from would stream
WAL onto a history that does not match (rule 11). All PostgreSQL work goes through
`PostgresController`, exactly as the agent does it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import urllib3

from pgwarden.cli.ctl_context import store_hosts, store_what
from pgwarden.config.load import load_node_config
from pgwarden.config.schema import ClusterSettings, NodeConfig
from pgwarden.core.history import merge_history
from pgwarden.core.manual import Writable, before_start, fork_refusal
from pgwarden.core.model import ClusterView, DataState, MemberInfo, PgView, Role
from pgwarden.core.sync import after_promotion_in
from pgwarden.errors import CliError
from pgwarden.store.base import StoreUnavailable
from pgwarden.store.cluster import ClusterStore
from pgwarden.tls.http import api_pool

if TYPE_CHECKING:  # imported when used: `pgwarden --help` must not need PostgreSQL
    from pgwarden.postgres.controller import PostgresController

log = logging.getLogger("pgwarden.node")

STORE_TIMEOUT = 3.0
HTTP_TIMEOUT = 2.0
PG_TIMEOUT = 60.0  # starting, promoting, stopping
COPY_TIMEOUT = 600.0  # pg_basebackup, pg_rewind
STREAM_WAIT = 30.0  # how long the commands wait to report a replica streaming


class Refused(CliError):
    """The command would be unsafe now; the message says why and what to do instead."""


# -- argument parsing ----------------------------------------------------------------------------


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    node = sub.add_parser("node", help="work on one node by hand while its agent is stopped")
    node.add_argument("-c", "--config", required=True, metavar="FILE", help="this node's YAML file")
    cmds = node.add_subparsers(dest="node_command", metavar="COMMAND", required=True)

    p = cmds.add_parser("clone", help="wipe the data directory, copy the leader, start as its replica")
    p.set_defaults(node_func=cmd_clone)
    p = cmds.add_parser("promote", help="promote this node (refused while another primary may take writes)")
    p.set_defaults(node_func=cmd_promote)
    p = cmds.add_parser("follow", help="stream from another member (refused across a timeline fork)")
    p.add_argument("--upstream", required=True, metavar="MEMBER", help="the member to stream from")
    p.set_defaults(node_func=cmd_follow)
    p = cmds.add_parser("rejoin", help="pg_rewind onto the leader (else clone again), start as its replica")
    p.set_defaults(node_func=cmd_rejoin)
    node.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = load_node_config(args.config)
    # Progress of the long steps (wipe, pg_basebackup, pg_rewind) on stderr, the way the agent
    # logs it; refusals stay a single line because they come before any of it.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="pgwarden: %(message)s")
    ctx = Node(cfg)
    func: Callable[[argparse.Namespace, Node], int] = args.node_func
    try:
        return func(args, ctx)
    except StoreUnavailable as e:
        raise CliError(f"cannot reach the store at {store_hosts(cfg.store)}: {e}; "
                       f"{store_what(cfg.store)}") from None
    finally:
        ctx.close()


# -- what every command works with ---------------------------------------------------------------


@dataclass
class Node:
    cfg: NodeConfig
    _store: ClusterStore | None = None
    _pg: PostgresController | None = None
    _view: ClusterView | None = field(default=None, repr=False)

    @property
    def store(self) -> ClusterStore:
        if self._store is None:
            # A client: in raft mode, a member would be a second voter on the agent's address.
            from pgwarden.store.factory import open_tool_store

            self._store = open_tool_store(self.cfg.store, self.cfg.cluster)
        return self._store

    def view(self) -> ClusterView:
        if self._view is None:
            self._view = self.store.snapshot(STORE_TIMEOUT)
        return self._view

    def settings(self) -> ClusterSettings:
        return self._view.settings if self._view is not None else self.cfg.initial_settings()

    @property
    def pg(self) -> PostgresController:
        if self._pg is None:
            from pgwarden.postgres.controller import PostgresController

            with warnings.catch_warnings():
                # The embedded wheel's lookup may warn about XDG dirs: noise in an operator command.
                warnings.simplefilter("ignore")
                self._pg = PostgresController(self.cfg, self.settings)
        return self._pg

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    # -- checks ----------------------------------------------------------------------------------
    def refuse_if_agent_runs(self) -> None:
        pid = agent_running(self.cfg)
        if pid is not None:
            raise Refused(f"the agent of {self.cfg.name} is running (pid {pid}) and owns its PostgreSQL; "
                          f"stop the agent first, or use `pgwarden ctl` to ask it")

    def refuse_if_leader(self, what: str) -> None:
        view = self.view()
        if view.leader is not None and view.leader.name == self.cfg.name:
            raise Refused(f"{self.cfg.name} holds the leader lease; {what} it only after a switchover "
                          f"or once the lease expired (`pgwarden ctl list`)")

    def leader(self) -> MemberInfo:
        """The leader's member entry, refusing when there is no running primary to copy from."""
        view = self.view()
        if view.leader is None:
            raise Refused(f"cluster {self.cfg.cluster} has no leader to copy from; wait for a failover "
                          f"or promote a node first")
        m = view.members.get(view.leader.name)
        if m is None or not m.running or m.role != Role.PRIMARY:
            raise Refused(f"the leader {view.leader.name} is not running as a primary right now; try again "
                          f"once `pgwarden ctl list` shows it running")
        return m

    def local_primary_is_writable(self, pgv: PgView) -> bool:
        return pgv.running and pgv.in_recovery is False


def agent_running(cfg: NodeConfig) -> int | None:
    """The PID of this node's agent if it runs: its REST API answers /status with a live
    agent_pid, or (an agent frozen or too busy to answer) the PID it wrote for its fencer is alive
    and still a pgwarden process."""
    http = api_pool(cfg.restapi.client_tls(), retries=False, timeout=urllib3.Timeout(HTTP_TIMEOUT))
    try:
        resp = http.request("GET", cfg.restapi.url() + "/status")
        body = json.loads(resp.data) if resp.status == 200 else None
        pid = body.get("agent_pid") if isinstance(body, dict) else None
        if isinstance(pid, int) and _pgwarden_alive(pid):
            return pid
    except (urllib3.exceptions.HTTPError, ValueError):
        pass
    from pgwarden.agent.single import run_dir_for
    from pgwarden.fence.state import read_state

    st = read_state(run_dir_for(cfg) / "fence.json")
    if st is not None and _pgwarden_alive(st.agent_pid):
        return st.agent_pid
    return None


def _pgwarden_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if stat.rpartition(")")[2].split()[0] in ("Z", "X"):
        return False
    args = raw.split(b"\0")
    return any(b"pgwarden" in a for a in args) and b"agent" in args


def _http_status(cfg: NodeConfig, url: str) -> tuple[int, Any] | None:
    http = api_pool(cfg.restapi.client_tls(), retries=False, timeout=urllib3.Timeout(HTTP_TIMEOUT))
    try:
        resp = http.request("GET", url)
    except urllib3.exceptions.HTTPError:
        return None
    try:
        body = json.loads(resp.data) if resp.data else None
    except ValueError:
        body = None
    return resp.status, body


def _writable(cfg: NodeConfig, host: str, port: int) -> bool:
    """Whether PostgreSQL at host:port answers as a primary (with this node's superuser, which
    `pgwarden` clusters share)."""
    from pgwarden.postgres import sql
    from pgwarden.postgres.tls import tool_options

    su = cfg.postgresql.superuser
    try:
        params = sql.ConnParams(host=host, port=port, user=su.username, password=su.secret(),
                                application_name="pgwarden-node", ssl=tool_options(cfg.postgresql.tls))
        with sql.connect(params, HTTP_TIMEOUT) as conn:
            row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
            return row is not None and not row[0]
    except (psycopg.Error, ValueError, OSError):
        return False


def _wait_streaming(node: Node) -> bool:
    deadline = time.monotonic() + STREAM_WAIT
    while time.monotonic() < deadline:
        pgv = node.pg.observe(2.0)
        if pgv.streaming:
            return True
        time.sleep(0.2)
    return False


def _upstream(m: MemberInfo) -> tuple[str, str, int]:
    return (m.name, m.host, m.port)


def _ensure_slot(node: Node, upstream: MemberInfo) -> None:
    """Our replication slot on `upstream`. A primary keeps slots only for members whose key it
    sees, and a node whose agent is stopped has none, so without this the replica would ask for
    a slot that does not exist and never stream. Once it streams the slot is active, and the
    upstream's agent drops only inactive slots."""
    from pgwarden.postgres import conf, sql
    from pgwarden.postgres.tls import tool_options

    slot = conf.slot_name(node.cfg.name)
    su = node.cfg.postgresql.superuser
    params = sql.ConnParams(host=upstream.host, port=upstream.port, user=su.username,
                            password=su.secret(), application_name="pgwarden-node",
                            ssl=tool_options(node.cfg.postgresql.tls))
    try:
        with sql.connect(params, STORE_TIMEOUT) as conn:
            row = conn.execute("SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s",
                               (slot,)).fetchone()
            if row is not None and row[0] == 0:
                conn.execute("SELECT pg_create_physical_replication_slot(%s, true)", (slot,))
    except psycopg.Error as e:
        # Unreachable for now, or another superuser there: the replica keeps retrying, and its
        # agent, once started, gets the slot made by the leader.
        log.warning("cannot ensure replication slot %s on %s: %s", slot, upstream.name, e)


def _clone(node: Node, leader: MemberInfo) -> None:
    """pg_basebackup from the leader with a progress bar on a terminal, else a line at the end."""
    from pgwarden.postgres.backup_progress import clone_progress  # rich: loaded when used

    with clone_progress(leader.name) as report:
        node.pg.clone(leader.host, leader.port, COPY_TIMEOUT, progress=report)


def _report_start(node: Node, upstream: MemberInfo, what: str) -> int:
    if _wait_streaming(node):
        print(f"{node.cfg.name}: {what}; streaming from {upstream.name}")
    else:
        print(f"{node.cfg.name}: {what}; started as a replica of {upstream.name}, not streaming yet "
              f"(see {node.pg.log_file})")
    return 0


# -- clone -----------------------------------------------------------------------------------------


def cmd_clone(args: argparse.Namespace, node: Node) -> int:
    node.refuse_if_agent_runs()
    node.refuse_if_leader("clone")
    leader = node.leader()
    if leader.name == node.cfg.name:  # pragma: no cover - refuse_if_leader said so already
        raise Refused(f"{node.cfg.name} is the leader")
    pgv = node.pg.observe(PG_TIMEOUT)
    if node.local_primary_is_writable(pgv):
        raise Refused(f"{node.cfg.name}'s PostgreSQL runs as a writable primary; its data may hold "
                      f"commits the leader lacks: stop it and use `pgwarden node rejoin`, or stop it "
                      f"first if you really mean to discard them")
    if pgv.running:
        node.pg.stop("fast", PG_TIMEOUT)
    _clone(node, leader)
    _ensure_slot(node, leader)
    node.pg.start(role="replica", upstream=_upstream(leader), wait_timeout=PG_TIMEOUT)
    return _report_start(node, leader, f"cloned from {leader.name}")


# -- promote ---------------------------------------------------------------------------------------


def cmd_promote(args: argparse.Namespace, node: Node) -> int:
    node.refuse_if_agent_runs()
    name = node.cfg.name
    view = node.view()
    pgv = node.pg.observe(PG_TIMEOUT)
    refusal = before_start(view, name, _writable_servers(node, view), pgv.data, str(node.pg.data_dir))
    if refusal is not None:
        raise Refused(refusal)
    if node.local_primary_is_writable(pgv):
        print(f"{name}: already a writable primary")
        return 0
    started_here = False
    if not pgv.running:
        # A standby of nobody first: promotion needs a running server in recovery, and only a
        # running standby tells its timeline (pg_control lags it until a restartpoint).
        node.pg.start(role="replica", upstream=None, wait_timeout=PG_TIMEOUT)
        started_here = True
        pgv = node.pg.observe(PG_TIMEOUT)
    refusal = fork_refusal(view, name, pgv.timeline)
    if refusal is not None:
        if started_here:
            node.pg.stop("fast", PG_TIMEOUT)
        raise Refused(refusal)
    # From its first commit, the new primary keeps the store's synchronous promise (rule 6).
    node.pg.promote(PG_TIMEOUT, after_promotion_in(view, name))
    after = node.pg.observe(PG_TIMEOUT)
    if after.timeline is not None:
        _publish_history(node, view, after.timeline)
    print(f"{name}: promoted; writable primary on timeline {after.timeline} "
          f"(its agent takes the leader lease when it starts, or demotes it if another member holds it)")
    return 0


def _writable_servers(node: Node, view: ClusterView) -> Iterator[Writable]:
    """The servers that answer as writable primaries, looked at lazily (the core stops at the
    first): every other member, then the upstream this node last streamed from."""
    for other in sorted(view.members.values(), key=lambda m: m.name):
        if other.name == node.cfg.name:
            continue
        answer = _http_status(node.cfg, other.api_url.rstrip("/") + "/primary") if other.api_url else None
        if (answer is not None and answer[0] == 200) or _writable(node.cfg, other.host, other.port):
            yield Writable(other.name, other.host, other.port)
    up = _configured_upstream(node)
    if up is not None and _writable(node.cfg, up[1], up[2]):
        yield Writable(up[0], up[1], up[2], upstream=True)


def _publish_history(node: Node, view: ClusterView, timeline: int) -> None:
    """Record the new timeline in the store as the agent does after promoting, so a later
    promotion elsewhere sees that this timeline exists (see cmd_promote)."""
    entries = merge_history(node.pg.read_timeline_history(timeline), view.history, node.cfg.name,
                            timeline, time.time(), "promoted by hand (pgwarden node promote)")
    node.store.set_history(entries, STORE_TIMEOUT)


def _configured_upstream(node: Node) -> tuple[str, str, int] | None:
    from pgwarden.postgres import conf

    try:
        text = (node.pg.data_dir / "postgresql.conf").read_text()
    except OSError:
        return None
    st = conf.read_state(text)
    if st is None or st.upstream is None:
        return None
    return (st.upstream.member, st.upstream.host, st.upstream.port)


# -- follow ----------------------------------------------------------------------------------------


def cmd_follow(args: argparse.Namespace, node: Node) -> int:
    from pgwarden.core.rewind import diverged

    node.refuse_if_agent_runs()
    name, target = node.cfg.name, str(args.upstream)
    if target == name:
        raise Refused(f"{name} cannot follow itself")
    node.refuse_if_leader("make it follow another member")
    view = node.view()
    up = view.members.get(target)
    if up is None:
        known = ", ".join(sorted(view.members)) or "none published"
        raise Refused(f"no member named '{target}' in cluster {node.cfg.cluster} (members: {known})")
    answer = _http_status(node.cfg, up.api_url.rstrip("/") + "/status") if up.api_url else None
    if answer is None or answer[0] != 200 or not isinstance(answer[1], dict):
        raise Refused(f"cannot read {target}'s timeline from its REST API ({up.api_url}/status); "
                      f"following it blind could cross a timeline fork")
    status: dict[str, Any] = answer[1]
    if status.get("upstream") == name:
        raise Refused(f"{target} streams from {name}; following it would make a loop")
    up_tl = status.get("timeline")
    pgv = node.pg.observe(PG_TIMEOUT)
    if pgv.data is not DataState.VALID:
        raise Refused(f"{name} has no valid data directory; use `pgwarden node clone`")
    if node.local_primary_is_writable(pgv):
        raise Refused(f"{name} runs a writable primary; it cannot follow {target} without a rewind: "
                      f"stop it and use `pgwarden node rejoin`")
    was_primary = pgv.was_primary if not pgv.running else False
    lsn = pgv.lsn if pgv.running else pgv.checkpoint_lsn
    if diverged(pgv.timeline, lsn, was_primary, up_tl if isinstance(up_tl, int) else None, view.history):
        raise Refused(f"{name} is on timeline {pgv.timeline} and {target} on timeline {up_tl}: "
                      f"{name}'s history forked from {target}'s, so it needs pg_rewind first "
                      f"(`pgwarden node rejoin`)")
    _ensure_slot(node, up)
    if pgv.running:
        node.pg.reconfigure(_upstream(up), pgv.sync, node.settings())
    else:
        node.pg.start(role="replica", upstream=_upstream(up), wait_timeout=PG_TIMEOUT)
    return _report_start(node, up, f"following {target}")


# -- rejoin ----------------------------------------------------------------------------------------


def cmd_rejoin(args: argparse.Namespace, node: Node) -> int:
    from pgwarden.core.rewind import diverged

    node.refuse_if_agent_runs()
    node.refuse_if_leader("rejoin")
    leader = node.leader()
    name = node.cfg.name
    pgv = node.pg.observe(PG_TIMEOUT)
    if pgv.data is not DataState.VALID:
        _clone(node, leader)
        _ensure_slot(node, leader)
        node.pg.start(role="replica", upstream=_upstream(leader), wait_timeout=PG_TIMEOUT)
        return _report_start(node, leader, f"no usable data; cloned from {leader.name}")
    if pgv.running:
        # Stopped first, whatever it runs as: a primary stops taking writes now (rule 3), and
        # pg_controldata tells the truth about a stopped directory only.
        node.pg.stop("fast", PG_TIMEOUT)
        pgv = node.pg.observe(PG_TIMEOUT)
    what = f"on {leader.name}'s timeline already"
    if diverged(pgv.timeline, pgv.checkpoint_lsn, pgv.was_primary, leader.timeline, node.view().history):
        if node.pg.rewind(leader.host, leader.port, COPY_TIMEOUT):
            what = f"rewound onto {leader.name}'s timeline {leader.timeline}"
        else:
            print(f"{name}: pg_rewind from {leader.name} failed; cloning instead", file=sys.stderr)
            _clone(node, leader)
            what = f"cloned from {leader.name} (pg_rewind failed)"
    _ensure_slot(node, leader)
    node.pg.start(role="replica", upstream=_upstream(leader), wait_timeout=PG_TIMEOUT)
    return _report_start(node, leader, what)
