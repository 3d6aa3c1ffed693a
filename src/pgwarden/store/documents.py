"""The cluster's documents in the store: the key layout, the JSON each key holds, and the one parse
of a `read` into a `ClusterView`, shared by every backend so all stores hold the same documents."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from pgwarden.config.errors import ConfigError
from pgwarden.config.load import parse_stored_settings, to_data
from pgwarden.config.schema import ClusterSettings
from pgwarden.core.model import (
    ClusterView,
    FailoverRequest,
    HistoryEntry,
    LeaderKey,
    MemberInfo,
    SiteState,
    SyncState,
)
from pgwarden.store.base import Entry, Layout

log = logging.getLogger("pgwarden.store")

# Keys, relative to `<prefix>/<cluster>/`.
INITIALIZE = "initialize"  # the PostgreSQL system identifier, once bootstrapped (create-only)
INIT_LOCK = "init_lock"  # the member bootstrapping (a lease)
CONFIG = "config"  # ClusterSettings (compare-and-swap)
LEADER = "leader"  # the leader's name (a lease)
SYNC = "sync"  # the synchronous promise (compare-and-swap)
FAILOVER = "failover"  # a switchover or failover request (compare-and-swap)
HISTORY = "history"  # the timeline history
OPTIME = "optime"  # the leader's last published LSN
FAILSAFE = "failsafe"  # the members whose majority the failsafe counts (compare-and-swap)
MEMBERS = "members"  # members/<name>: each member's state (a ttl key of its own)
SITE = "site"  # the site epoch and the other sites' API URLs (compare-and-swap; core/standby.py)

LAYOUT = Layout(
    keys=(INITIALIZE, INIT_LOCK, CONFIG, LEADER, SYNC, FAILOVER, HISTORY, OPTIME, FAILSAFE, SITE),
    dirs=(MEMBERS,),
    # The leader rewrites `optime` every loop, and `history` and `failsafe` change only with the
    # leader key: nobody needs to wake for them.
    quiet=frozenset({HISTORY, OPTIME, FAILSAFE}),
)


def member_key(name: str) -> str:
    return f"{MEMBERS}/{name}"


# -- JSON encodings ---------------------------------------------------------------------------


def dump_settings(s: ClusterSettings) -> str:
    return json.dumps(to_data(s), sort_keys=True)


def dump_sync(s: SyncState) -> str:
    return json.dumps({"leader": s.leader, "members": sorted(s.members), "quorum": s.quorum})


def load_sync(raw: str, token: str) -> SyncState:
    d = json.loads(raw)
    return SyncState(d.get("leader"), frozenset(d.get("members") or ()), int(d.get("quorum", 0)), token)


def dump_failover(r: FailoverRequest) -> str:
    return json.dumps(
        {"kind": r.kind, "leader": r.leader, "candidate": r.candidate, "scheduled_at": r.scheduled_at}
    )


def load_failover(raw: str, token: str) -> FailoverRequest:
    d = json.loads(raw)
    return FailoverRequest(d.get("kind", "failover"), d.get("leader"), d.get("candidate"),
                           d.get("scheduled_at"), token)


def dump_history(h: tuple[HistoryEntry, ...]) -> str:
    return json.dumps(
        [{"timeline": e.timeline, "switch_lsn": e.switch_lsn, "reason": e.reason, "at": e.at,
          "new_leader": e.new_leader} for e in h]
    )


def load_history(raw: str) -> tuple[HistoryEntry, ...]:
    out: list[HistoryEntry] = []
    for d in json.loads(raw):
        out.append(HistoryEntry(int(d["timeline"]), int(d["switch_lsn"]), str(d.get("reason", "")),
                                d.get("at"), d.get("new_leader")))
    return tuple(out)


def dump_site(s: SiteState) -> str:
    return json.dumps({"epoch": s.epoch, "peers": list(s.peers)})


def load_site(raw: str, token: str, cluster: str) -> SiteState:
    d = json.loads(raw)
    peers = d.get("peers") or []
    if not isinstance(peers, list):
        raise ValueError("peers must be a list of URLs")
    return SiteState(int(d.get("epoch", 0)), tuple(str(p) for p in peers), token, cluster)


def dump_failsafe(members: frozenset[str]) -> str:
    return json.dumps({"members": sorted(members)})


def load_failsafe(raw: str) -> frozenset[str]:
    d = json.loads(raw)
    return frozenset(str(n) for n in d.get("members") or ())


def dump_member(m: MemberInfo) -> str:
    return json.dumps(m.to_dict(), sort_keys=True)


def load_member(raw: str) -> MemberInfo:
    d: dict[str, Any] = json.loads(raw)
    return MemberInfo.from_dict(d)


# -- reading the whole cluster ----------------------------------------------------------------

# Every loop reads the whole cluster, and while it idles the documents do not change: parsing the
# same text into the same (immutable) objects every second was a visible part of an idle agent's
# CPU (issue 16). A parse that fails raises every time, as before: lru_cache keeps no exceptions.
@lru_cache(maxsize=64)
def _member(raw: str) -> MemberInfo:
    return load_member(raw)


@lru_cache(maxsize=8)
def _settings(raw: str, source: str) -> ClusterSettings:
    return parse_stored_settings(json.loads(raw), source)



def parse_view(entries: Mapping[str, Entry], cluster: str) -> ClusterView:
    """The cluster as `entries` (one `KV.read`) show it. An unreadable key is skipped with a
    warning; unreadable settings fall back to the defaults but keep their token, so an
    operator's fix (a compare-and-swap write) still goes through."""
    initialized: str | None = None
    init_holder: str | None = None
    settings = ClusterSettings()
    settings_token = ""
    leader: LeaderKey | None = None
    members: dict[str, MemberInfo] = {}
    sync: SyncState | None = None
    failover: FailoverRequest | None = None
    history: tuple[HistoryEntry, ...] = ()
    leader_lsn: int | None = None
    site = SiteState(cluster=cluster)
    failsafe: frozenset[str] = frozenset()
    failsafe_token = ""
    for key, e in sorted(entries.items()):
        raw, token = e.value, e.version
        try:
            if key == INITIALIZE:
                initialized = raw
            elif key == INIT_LOCK:
                init_holder = raw
            elif key == CONFIG:
                settings_token = token
                try:
                    settings = _settings(raw, f"store key {cluster}/{CONFIG}")
                except (ConfigError, ValueError) as err:
                    log.warning("store: stored cluster settings are invalid, using defaults: %s", err)
            elif key == LEADER:
                leader = LeaderKey(raw, token)
            elif key.startswith(MEMBERS + "/"):
                m = _member(raw)
                members[m.name] = m
            elif key == SYNC:
                sync = load_sync(raw, token)
            elif key == FAILOVER:
                failover = load_failover(raw, token)
            elif key == HISTORY:
                history = load_history(raw)
            elif key == SITE:
                site = load_site(raw, token, cluster)
            elif key == OPTIME:
                leader_lsn = int(raw)
            elif key == FAILSAFE:
                failsafe_token = token  # kept even when unreadable, so the leader can rewrite it
                failsafe = load_failsafe(raw)
        except (ValueError, KeyError, TypeError) as err:
            log.warning("store: skipping unreadable key %s/%s: %s", cluster, key, err)
    return ClusterView(
        initialized=initialized, init_holder=init_holder, settings=settings,
        settings_token=settings_token, leader=leader, members=members, sync=sync,
        failover=failover, history=history, leader_lsn=leader_lsn, site=site,
        failsafe_members=failsafe, failsafe_token=failsafe_token,
    )
