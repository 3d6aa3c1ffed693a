"""`pgwarden ctl site-peers`: show or edit the site document's peers — the REST API URLs of the
other sites' members that this site's agents ask `GET /site` (SAFETY rule 18, docs/multi-site.md).

`local up --standby-of` and `site-switchover` write them; a site whose members changed (a node
added or moved), or a site paired by hand with `demote-cluster`, needs them edited. The epoch is
never changed here; the write is a compare-and-swap on the document read."""

from __future__ import annotations

import argparse
from dataclasses import replace
from urllib.parse import urlsplit

from pgwarden.cli.ctl_context import Ctx
from pgwarden.cli.sites import STORE_TIMEOUT, cas
from pgwarden.core.model import ClusterView
from pgwarden.errors import CliError


def register(cmds: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = cmds.add_parser("site-peers", help="show or edit the other sites' REST API URLs (rule 18)")
    p.add_argument("--add", action="append", default=[], metavar="URL",
                   help="a member of another site, e.g. http://10.0.1.5:8008 (repeatable)")
    p.add_argument("--remove", action="append", default=[], metavar="URL",
                   help="a URL to drop (repeatable)")
    p.set_defaults(ctl_func=cmd_site_peers)


def normalize(url: str) -> str:
    """http(s)://host:port, without a path; anything else is one line saying what is wrong."""
    try:
        u = urlsplit(url.strip())
        port = u.port
    except ValueError:
        port, u = None, urlsplit("")
    if u.scheme not in ("http", "https") or not u.hostname or port is None or u.path not in ("", "/") \
            or u.query or u.fragment or u.username or u.password:
        raise CliError(f"not a REST API URL: {url!r} (expected http://HOST:PORT or https://HOST:PORT, "
                       f"no path or credentials)")
    host = f"[{u.hostname}]" if ":" in u.hostname else u.hostname
    return f"{u.scheme}://{host}:{port}"


def edited(peers: tuple[str, ...], add: list[str], remove: list[str]) -> tuple[str, ...]:
    """The peers after removing and then adding (order kept, no duplicates). Removing a URL that is
    not there is an error: a typo must not pass silently."""
    gone = [normalize(u) for u in remove]
    missing = [u for u in gone if u not in peers]
    if missing:
        raise CliError(f"not a peer of this site: {', '.join(missing)} (see `pgwarden ctl site-peers`)")
    kept = tuple(p for p in peers if p not in gone)
    return tuple(dict.fromkeys((*kept, *(normalize(u) for u in add))))


def _show(view: ClusterView, name: str) -> None:
    print(f"cluster {name}: site epoch {view.site.epoch}")
    if not view.site.peers:
        print("no peers: this site's agents do not look at any other site")
    for p in view.site.peers:
        print(f"  {p}")


def cmd_site_peers(args: argparse.Namespace, ctx: Ctx) -> int:
    view = ctx.snapshot()
    if not args.add and not args.remove:
        _show(view, ctx.cfg.cluster)
        return 0
    if edited(view.site.peers, args.add, args.remove) == view.site.peers:
        print("no change")
        _show(view, ctx.cfg.cluster)
        return 0

    def write(v: ClusterView) -> bool:
        new = edited(v.site.peers, args.add, args.remove)
        return new == v.site.peers or ctx.store.set_site(replace(v.site, peers=new), v.site.token or None,
                                                          STORE_TIMEOUT)
    cas(ctx.store, write, "site-peers")
    after = ctx.store.snapshot(STORE_TIMEOUT)
    _show(after, ctx.cfg.cluster)
    if not after.site.peers:
        print("warning: with no peers, a site that comes back after a forced promotion "
              "elsewhere cannot see it (rule 18)")
    return 0
