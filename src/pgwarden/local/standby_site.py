"""`local up --standby-of DIR`: a second local cluster that is a standby site of the one in DIR
(docs/multi-site.md). Reads the source site's node files for its members' addresses and the
PostgreSQL credentials (a standby site is a physical copy: its roles and passwords are the
source's), and links the two sites' documents so each one's agents watch the other (rule 18)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

from pgwarden.config.load import replace as replace_settings
from pgwarden.config.schema import ClusterSettings
from pgwarden.errors import CliError
from pgwarden.local.handle import ClusterHandle, node_file
from pgwarden.local.layout import STATE_FILE, TLS_DIR, load_state
from pgwarden.store.cluster import ClusterStore

LINK_TIMEOUT = 10.0


@dataclass(frozen=True)
class SourceSite:
    directory: Path
    cluster: str
    dsn: str  # multi-host, read-write, the replication user; no password (the passfile has it)
    api_urls: tuple[str, ...]
    superuser_password: str
    replication_password: str
    tls: bool  # `local up --tls`: its CA signs the standby site's certificates too


def read_source_site(directory: Path) -> SourceSite:
    d = Path(os.path.abspath(directory))
    state = load_state(d) if d.is_dir() else None
    if state is None:
        raise CliError(f"--standby-of {directory}: no local cluster there (no {STATE_FILE}); start the "
                       f"primary site first with `pgwarden local up --dir {directory}`")
    cfgs = [c for c in (node_file(r) for r in state.agents()) if c is not None]
    if not cfgs:
        raise CliError(f"--standby-of {directory}: the cluster there has no node files to read")
    tls = any(c.restapi.tls is not None or c.postgresql.tls is not None for c in cfgs)
    if tls and not (d / TLS_DIR / "ca.key").is_file():
        raise CliError(f"--standby-of {directory}: that cluster uses TLS but {d / TLS_DIR} holds no CA of "
                       f"`local up --tls` to sign the standby site's certificates with")
    hosts = [c.postgresql.connect_host_port() for c in cfgs]
    pg = cfgs[0].postgresql
    dsn = (f"host={','.join(h for h, _ in hosts)} port={','.join(str(p) for _, p in hosts)} "
           f"user={pg.replication.username} dbname=postgres target_session_attrs=read-write")
    try:
        su, repl = pg.superuser.secret(), pg.replication.secret()
    except ValueError as e:
        raise CliError(f"--standby-of {directory}: {e}") from None
    return SourceSite(d, state.cluster, dsn, tuple(c.restapi.url() for c in cfgs), su, repl, tls)


def standby_settings(settings: ClusterSettings, source: SourceSite, directory: Path) -> ClusterSettings:
    """The standby site's seed settings. Over TLS its stream checks the source's servers against
    the standby site's copy of the one CA (docs/multi-site.md)."""
    dsn = source.dsn
    if source.tls:
        dsn += f" sslmode=verify-full sslrootcert={directory / TLS_DIR / 'ca.crt'}"
    return replace_settings(settings, standby_cluster={"source": dsn})


def _add_peers(store: ClusterStore, urls: tuple[str, ...], epoch: int | None, deadline: float) -> None:
    """Add `urls` to the site document's peers (and raise its epoch to `epoch`), by
    compare-and-swap until it holds or the deadline passes."""
    while True:
        view = store.snapshot(LINK_TIMEOUT)
        site = view.site
        peers = tuple(dict.fromkeys((*site.peers, *urls)))
        new = replace(site, peers=peers, epoch=max(site.epoch, epoch or 0))
        if new == site or store.set_site(new, site.token, LINK_TIMEOUT):
            return
        if time.monotonic() > deadline:
            raise CliError(f"could not update the site document of {view.site.cluster}")
        time.sleep(0.2)


def link_sites(source: SourceSite, standby: ClusterHandle) -> None:
    """Each site's document names the other's REST APIs: the source's agents then see the
    standby site once it is promoted (rule 18), and the standby site starts from the source's
    epoch, so its own promotion outranks it."""
    deadline = time.monotonic() + LINK_TIMEOUT
    a = ClusterHandle(source.directory, standby.out)
    try:
        a_store, b_store = a.store(), standby.store()
        if a_store is None or b_store is None:
            raise CliError("cannot reach both sites' stores to link them")
        b_urls = tuple(c.restapi.url() for c in (node_file(r) for r in standby.current_state().agents())
                       if c is not None)
        a_epoch = a_store.snapshot(LINK_TIMEOUT).site.epoch
        _add_peers(a_store, b_urls, None, deadline)
        _add_peers(b_store, source.api_urls, a_epoch, deadline)
    finally:
        a.close()
