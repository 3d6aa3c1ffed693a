"""`pgwarden ctl` commands between sites (docs/multi-site.md, SAFETY rule 18): promote-cluster,
demote-cluster and site-switchover. They look before they act (cli/site_look.py) and change
only the store's documents; the agents do the rest (core/standby.py). Every refusal is one line
and leaves everything as it was."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import replace as dc_replace
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgwarden.cli.ctl_context import Ctx
from pgwarden.cli.site_look import (
    describe_lag,
    look_at,
    read_sites,
    standby_leader_replay,
    superuser_dsn,
)
from pgwarden.config.errors import ConfigError
from pgwarden.config.load import load_node_config, replace
from pgwarden.config.schema import NodeConfig
from pgwarden.core.model import ClusterView, Role, int_to_lsn, lsn_to_int
from pgwarden.errors import CliError
from pgwarden.report import ssl_options
from pgwarden.store.cluster import ClusterStore

STORE_TIMEOUT = 3.0
ROLE_TIMEOUT = 60.0  # a demotion or promotion the agents carry out: a few loops, a restart
CATCH_UP_TIMEOUT = 60.0


def register(cmds: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = cmds.add_parser("promote-cluster", help="make this standby site the primary site")
    p.add_argument("--force", action="store_true",
                   help="the source site is lost: promote without reaching it (reports what may be lost)")
    p.add_argument("--timeout", type=float, default=ROLE_TIMEOUT, help=argparse.SUPPRESS)
    p.set_defaults(ctl_func=cmd_promote_cluster)
    p = cmds.add_parser("demote-cluster", help="make this site a standby site of another")
    p.add_argument("--source", required=True, metavar="DSN",
                   help="libpq DSN of the other site's members (no password), e.g. "
                        "'host=h1,h2 port=5432,5432 user=replicator target_session_attrs=read-write'")
    p.add_argument("--timeout", type=float, default=ROLE_TIMEOUT, help=argparse.SUPPRESS)
    p.set_defaults(ctl_func=cmd_demote_cluster)
    p = cmds.add_parser("site-switchover", help="planned move of the primary role to a standby site, no loss")
    p.add_argument("--to", required=True, metavar="FILE", help="a node file of the standby site")
    p.add_argument("--source", metavar="DSN",
                   help="how this site will reach the target site's members once it follows them (no "
                        "password); default: the target's members at the addresses its store lists")
    p.add_argument("--timeout", type=float, default=ROLE_TIMEOUT, help=argparse.SUPPRESS)
    p.set_defaults(ctl_func=cmd_site_switchover)


# -- store writes ----------------------------------------------------------------------------------


def cas(store: ClusterStore, write: Callable[[ClusterView], bool], what: str) -> None:
    """Read, write against what was read; again (ten times at most) while someone else wrote first."""
    for _ in range(10):
        if write(store.snapshot(STORE_TIMEOUT)):
            return
    raise CliError(f"{what}: the store kept changing while we wrote; try again")


def _set_standby(store: ClusterStore, source: str | None) -> None:
    def write(v: ClusterView) -> bool:
        sc: Any = None if source is None else {"source": source}
        new = replace(v.settings, standby_cluster=sc)
        return store.set_settings(new, v.settings_token or None, STORE_TIMEOUT)
    cas(store, write, "changing standby_cluster")


def _set_site(store: ClusterStore, epoch: int, peers: tuple[str, ...] = ()) -> None:
    def write(v: ClusterView) -> bool:
        merged = tuple(dict.fromkeys((*v.site.peers, *peers)))
        new = dc_replace(v.site, epoch=max(epoch, v.site.epoch), peers=merged)
        return new == v.site or store.set_site(new, v.site.token or None, STORE_TIMEOUT)
    cas(store, write, "writing the site document")


def _wait_leader_role(store: ClusterStore, role: Role, timeout: float, what: str) -> str:
    deadline = time.monotonic() + timeout
    while True:
        v = store.snapshot(STORE_TIMEOUT)
        m = v.members.get(v.leader.name) if v.leader is not None else None
        if m is not None and m.role == role and m.running:
            return m.name
        if time.monotonic() > deadline:
            raise CliError(f"{what}: no {role.value} after {timeout:g}s "
                           f"(see `pgwarden ctl list` and the agents' logs)")
        time.sleep(0.2)


def _config_error(e: Exception) -> CliError:
    return CliError(str(e).splitlines()[0])


# -- promote-cluster -------------------------------------------------------------------------------


def _promote(ctx: Ctx, view: ClusterView, seen_epochs: list[int], timeout: float) -> tuple[int, str]:
    """The epoch first (rule 18: the mark the other site must see), then standby_cluster goes."""
    epoch = max([view.site.epoch, *seen_epochs]) + 1
    _set_site(ctx.store, epoch)
    _set_standby(ctx.store, None)
    leader = _wait_leader_role(ctx.store, Role.PRIMARY, timeout, f"promoting {ctx.cfg.cluster}")
    return epoch, leader


def cmd_promote_cluster(args: argparse.Namespace, ctx: Ctx) -> int:
    view = ctx.snapshot()
    name = ctx.cfg.cluster
    sc = view.settings.standby_cluster
    if sc is None:
        raise CliError(f"cluster {name} is not a standby site (no standby_cluster setting): "
                       f"nothing to promote")
    replay = standby_leader_replay(view, ctx.cfg)
    source = look_at(sc.source, ctx.cfg)
    sites = read_sites(view.site.peers, ctx.cfg)
    writable = source.writable or any(r.writable for r in sites)
    print(f"standby site {name}: {describe_lag(replay, source)}")
    if not args.force:
        if writable:
            where = source.where or ", ".join(r.cluster for r in sites if r.writable)
            raise CliError(f"refusing to promote {name}: its source site still has a writable primary "
                           f"({where}); move without loss with `pgwarden ctl -c <a source node file> "
                           f"site-switchover --to {ctx.path}`, or demote it first; --force is only for a "
                           f"lost site")
        if not source.reachable:
            raise CliError(f"refusing to promote {name}: cannot reach its source site ({source.error}) to "
                           f"see that it no longer writes; if that site is lost, promote with --force")
        if not sites or not all(r.standby for r in sites):
            # Rule 18: "only after the other site's primary has been demoted". A site with no
            # primary right now may be failing over inside itself and promote again.
            raise CliError(f"refusing to promote {name}: its source site has no writable primary now but "
                           f"was not demoted (a failover in progress?); demote it with demote-cluster "
                           f"first, or use --force if it is lost")
    else:
        when = replay.last_commit.isoformat(timespec="seconds") if replay.last_commit else "the clone"
        print(f"forced promotion: whatever the source site committed after {when} "
              f"(past {int_to_lsn(replay.replayed)}) is lost to {name}; when the source site comes back, its "
              f"primary sees the new site epoch and demotes itself to a standby site of {name}")
    if not args.force and source.lsn is not None:
        # Everything the demoted site wrote, its shutdown checkpoint included: it then follows
        # us without pg_rewind.
        _wait_replayed(ctx, source.lsn, CATCH_UP_TIMEOUT)
    epoch, leader = _promote(ctx, view, [r.epoch for r in sites], args.timeout)
    print(f"cluster {name} is the primary site (site epoch {epoch}); {leader} accepts writes")
    return 0


# -- demote-cluster --------------------------------------------------------------------------------


def cmd_demote_cluster(args: argparse.Namespace, ctx: Ctx) -> int:
    name = ctx.cfg.cluster
    view = ctx.snapshot()
    try:
        replace(view.settings, standby_cluster={"source": args.source})
    except (ConfigError, ValueError) as e:
        raise _config_error(e) from None
    remote = look_at(args.source, ctx.cfg)
    if not remote.reachable:
        raise CliError(f"cannot reach --source ({remote.error}); nothing changed")
    if view.initialized is not None and remote.system_id != view.initialized:
        raise CliError(f"--source reaches {remote.where}, a server of another database system (system id "
                       f"{remote.system_id}, {name} has {view.initialized}); nothing changed")
    _set_standby(ctx.store, args.source)
    leader = _wait_leader_role(ctx.store, Role.STANDBY_LEADER, args.timeout, f"demoting {name}")
    print(f"cluster {name} is a standby site of {remote.where}; {leader} is its standby leader")
    return 0


# -- site-switchover -------------------------------------------------------------------------------


def _addresses(dsn: str) -> set[tuple[str, str]]:
    d = conninfo_to_dict(dsn)
    hosts, ports = str(d.get("host") or "").split(","), str(d.get("port") or "5432").split(",")
    if len(ports) == 1:
        ports = ports * len(hosts)
    return set(zip(hosts, ports, strict=False))


def _site_source(view: ClusterView, cfg: NodeConfig) -> str:
    """The DSN this site streams from `view`'s site through. With postgresql.tls it checks the
    other site's servers against this node file's CA (one CA for both sites, or a file with both)."""
    ms = sorted(view.members.values(), key=lambda m: m.name)
    return make_conninfo(host=",".join(m.host for m in ms), port=",".join(str(m.port) for m in ms),
                         user=cfg.postgresql.replication.username, dbname="postgres",
                         target_session_attrs="read-write", **ssl_options(cfg.postgresql.tls))


def _streams_from(ctx: Ctx, host: str, port: int, cluster: str) -> bool:
    """Some member of `cluster` streams from the server at host:port (standby sites stream under
    the site-qualified application_name CLUSTER.MEMBER)."""
    try:
        with psycopg.connect(superuser_dsn(make_conninfo(host=host, port=str(port)), ctx.cfg),
                             autocommit=True) as c:
            row = c.execute("SELECT count(*) FROM pg_stat_replication "
                            "WHERE starts_with(application_name, %s)", (cluster + ".",)).fetchone()
    except psycopg.Error:
        return False
    return row is not None and int(row[0]) > 0


def _end_of_wal(ctx: Ctx, member: str, timeout: float) -> int:
    """The demoted primary's last WAL position (its shutdown checkpoint included), read once it
    runs again as a standby."""
    deadline = time.monotonic() + timeout
    while True:
        m = ctx.snapshot().members.get(member)
        if m is not None and m.role in (Role.REPLICA, Role.STANDBY_LEADER) and m.running:
            try:
                dsn = superuser_dsn(make_conninfo(host=m.host, port=str(m.port)), ctx.cfg)
                with psycopg.connect(dsn, autocommit=True) as c:
                    row = c.execute("SELECT pg_is_in_recovery(), greatest(pg_last_wal_replay_lsn(), "
                                    "pg_last_wal_receive_lsn())::text").fetchone()
                if row is not None and row[0] and row[1] is not None:
                    end = lsn_to_int(row[1])
                    assert end is not None
                    return end
            except psycopg.Error:
                pass
        if time.monotonic() > deadline:
            raise CliError(f"{member} did not come back as a standby within {timeout:g}s; the site is "
                           f"demoted: see `pgwarden ctl list`")
        time.sleep(0.2)


def _wait_replayed(b: Ctx, end: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        replay = standby_leader_replay(b.snapshot(), b.cfg)
        if replay.replayed is not None and replay.replayed >= end:
            return
        if time.monotonic() > deadline:
            raise CliError(f"{b.cfg.cluster}'s standby leader replayed only {int_to_lsn(replay.replayed)} "
                           f"of {int_to_lsn(end)} within {timeout:g}s; both sites are standby sites now: "
                           f"fix the stream and run promote-cluster on {b.cfg.cluster}, or demote-cluster "
                           f"back")
        time.sleep(0.1)


def cmd_site_switchover(args: argparse.Namespace, ctx: Ctx) -> int:
    a_name = ctx.cfg.cluster
    a = ctx.snapshot()
    try:
        b = Ctx(load_node_config(args.to), args.to)
    except ConfigError as e:
        raise _config_error(e) from None
    try:
        bv = b.snapshot()
        sc = bv.settings.standby_cluster
        a_addrs = {(m.host, str(m.port)) for m in a.members.values()}
        if a.settings.standby_cluster is not None:
            raise CliError(f"cluster {a_name} is itself a standby site; run site-switchover from the "
                           f"primary site")
        lm = a.members.get(a.leader.name) if a.leader is not None else None
        if lm is None or lm.role != Role.PRIMARY or not lm.running:
            raise CliError(f"cluster {a_name} has no running primary to switch over from; nothing changed")
        # Its source names our members, or (through a proxy or another address) its standby
        # leader streams from our primary now.
        if sc is None or bv.initialized != a.initialized or not (
                _addresses(sc.source) & a_addrs or _streams_from(ctx, lm.host, lm.port, b.cfg.cluster)):
            raise CliError(f"cluster {b.cfg.cluster} ({args.to}) is not a standby site of {a_name}; "
                           f"nothing changed")
        source = _site_source(bv, ctx.cfg) if args.source is None else args.source
        if args.source is not None:
            remote = look_at(args.source, ctx.cfg)
            if not remote.reachable or remote.system_id != a.initialized:
                why = remote.error if not remote.reachable else f"it reaches system id {remote.system_id}"
                raise CliError(f"--source does not reach {b.cfg.cluster}'s servers ({why}); nothing changed")
        replay = standby_leader_replay(bv, b.cfg)
        print(f"{b.cfg.cluster} before the switchover: {replay.member} replayed up to "
              f"{int_to_lsn(replay.replayed)}")
        # 1. Stop writes on A: its leader demotes (a fast shutdown sends the shutdown checkpoint
        # to B's standby leader) and streams from B once B accepts writes.
        _set_standby(ctx.store, source)
        end = _end_of_wal(ctx, lm.name, args.timeout)
        print(f"{a_name} stopped writing at {int_to_lsn(end)}")
        # 2. B has every byte of it, then B becomes the primary site with a higher epoch.
        _wait_replayed(b, end, CATCH_UP_TIMEOUT)
        epoch = max(a.site.epoch, bv.site.epoch) + 1
        _set_site(ctx.store, epoch, tuple(m.api_url for m in bv.members.values()))
        _set_site(b.store, epoch, tuple(m.api_url for m in a.members.values()))
        _set_standby(b.store, None)
        leader = _wait_leader_role(b.store, Role.PRIMARY, args.timeout, f"promoting {b.cfg.cluster}")
        _wait_leader_role(ctx.store, Role.STANDBY_LEADER, args.timeout, f"demoting {a_name}")
        print(f"cluster {b.cfg.cluster} is the primary site (site epoch {epoch}, {leader} accepts writes); "
              f"{a_name} streams from it")
        return 0
    finally:
        b.close()
