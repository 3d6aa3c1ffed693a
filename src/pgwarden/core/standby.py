"""Standby sites and SAFETY rule 18 (two sites never both accept writes), pure like the rest of
the core: decide.py calls these hooks; docs/architecture.md gives the argument, docs/multi-site.md
the operator's view.

* A cluster whose settings carry `standby_cluster` is a standby site: its lease holder is a
  standby leader streaming from `standby_cluster.source`; it never promotes, and a primary in it
  demotes. Its other members cascade from the standby leader as from any leader.
* Every site keeps a site document (epoch, the other sites' REST API URLs). A standby site's
  promotion (`ctl promote-cluster`) raises its epoch above every epoch it has seen. A writable
  site's leader (or a leaderless member about to promote) reads the other sites each loop: when
  one of them is writable with a newer (epoch, cluster name), it joins that site as a standby
  site (`JoinSite`), stopping writes in the same decision, and never promotes meanwhile.
"""

from __future__ import annotations

import zlib

from pgwarden.core.actions import (
    Action,
    Bootstrap,
    Decision,
    Demote,
    Follow,
    JoinSite,
    Promote,
    RecordEpoch,
    ReleaseLease,
    RenewLease,
    Rewind,
    StartPostgres,
    StopPostgres,
    Upstream,
)
from pgwarden.core.model import ClusterView, Observation, SiteReading
from pgwarden.core.settings import ClusterSettings
from pgwarden.core.slots import ensure_slots


def source_upstream(settings: ClusterSettings) -> Upstream | None:
    """The standby site's source as an upstream; its name changes with the DSN or slot, so a
    running standby leader is re-pointed (Follow) when `ctl demote-cluster` changes them."""
    sc = settings.standby_cluster
    if sc is None:
        return None
    tag = zlib.crc32(f"{sc.source}\0{sc.primary_slot_name or ''}".encode())
    return Upstream(f"source-site-{tag:08x}", "", 0, dsn=sc.source, slot=sc.primary_slot_name)


def _primary(obs: Observation) -> bool:
    return obs.pg.running and obs.pg.in_recovery is False


def newer_writable_site(view: ClusterView, sites: tuple[SiteReading, ...]) -> SiteReading | None:
    """Another site that accepts writes and outranks ours: a higher epoch, or the same epoch and
    a cluster name not below ours (only a hand edit of standby_cluster makes equal epochs; then
    the lower name demotes, and equal names both do: never two writable sites)."""
    mine, cluster = view.site.epoch, view.site.cluster
    best: SiteReading | None = None
    for r in sites:
        if not (r.reachable and r.writable and r.dsn):
            continue
        outranks = r.epoch > mine or (r.epoch == mine and r.cluster >= cluster)
        if outranks and (best is None or r.epoch > best.epoch):
            best = r
    return best


def site_guard(obs: Observation, view: ClusterView) -> Decision | None:
    """Rule 18 and the standby site's "no primary", checked before any other rule for a member
    with valid data. None: nothing to say, decide as usual."""
    leading = view.leader is not None and view.leader.name == obs.me.name
    if view.settings.standby_cluster is not None:
        if _primary(obs) and view.leader is None:
            src = source_upstream(view.settings)
            return Decision((Demote(src, "this cluster is a standby site"),),
                            "primary in a standby site with no leader: demoting")
        return None
    winner = newer_writable_site(view, obs.sites)
    if winner is None or not (leading or view.leader is None or _primary(obs)):
        return None
    steps: list[Action] = []
    if leading and obs.lease.held:
        steps.append(RenewLease())
    # The intent first, in the store: a loop that then loses sight of the other site must not
    # find a writable-site leader in recovery and promote it again.
    steps.append(JoinSite(winner.dsn, winner.epoch))
    if _primary(obs):
        steps.append(Demote(None, f"site {winner.cluster} is writable with epoch {winner.epoch}"))
    return Decision(tuple(steps), f"site {winner.cluster} accepts writes with epoch {winner.epoch} "
                                  f"(ours {view.site.epoch}): becoming a standby site of it")


def as_standby_leader(obs: Observation, view: ClusterView, held_back: bool) -> Decision:
    """The lease holder of a standby site: stream from the source, never promote."""
    pg, settings = obs.pg, view.settings
    src = source_upstream(settings)
    assert src is not None
    steps: list[Action] = [RenewLease()]
    seen = max((r.epoch for r in obs.sites if r.reachable), default=0)
    if seen > view.site.epoch:
        steps.append(RecordEpoch(seen))
    if not pg.running:
        if held_back:
            return Decision(tuple(steps), "standby leader; PostgreSQL stopped (paused: not starting it)")
        return Decision((*steps, StartPostgres("replica", src)),
                        "standby leader; starting as a standby of the source site")
    if pg.in_recovery is False:
        return Decision((*steps, Demote(src, "this cluster is a standby site")),
                        "standby site: the leader runs as a primary; demoting it to stream from the source")
    if not pg.healthy:
        if pg.unhealthy_for > settings.ttl and not settings.paused:
            return Decision((StopPostgres("fast", "PostgreSQL stopped answering"), ReleaseLease()),
                            "standby leader unhealthy too long: stopping it and releasing the lease")
        return Decision(tuple(steps), f"standby leader; PostgreSQL not answering for {pg.unhealthy_for:.1f}s")
    if pg.upstream != src.name:
        return Decision((*steps, Follow(src)), "standby leader; pointing the stream at the source site")
    if pg.not_streaming_for > stuck_after(settings):
        # A site that wrote past the point where the source site's primary was promoted (a forced
        # promotion, rule 18) cannot stream: pg_rewind judges, and says so cheaply when nothing forked.
        rewind = (StopPostgres("fast", "not streaming"), Rewind(src), StartPostgres("replica", src))
        return Decision((*steps, *rewind), f"standby leader not streaming for {pg.not_streaming_for:.0f}s: "
                                           f"pg_rewind from the source site checks for a fork")
    slots = frozenset(n for n in view.members if n != obs.me.name)
    state = "streaming" if pg.streaming else "not streaming yet"
    return Decision((*steps, ensure_slots(obs, slots)), f"standby leader, {state} from the source site")


def stuck_after(settings: ClusterSettings) -> float:
    """How long a standby leader may fail to stream before pg_rewind checks for a fork."""
    return max(15.0, 3 * settings.ttl)


def without_promotion(settings: ClusterSettings, steps: tuple[Action, ...]) -> tuple[Action, ...]:
    """A leaderless member of a standby site takes the lease but does not promote: as leader it
    becomes the standby leader."""
    if settings.standby_cluster is None:
        return steps
    return tuple(a for a in steps if not isinstance(a, Promote))


def promoting(settings: ClusterSettings) -> str:
    return " (standby site: to stream from the source, not to promote)" if settings.standby_cluster \
        else " and promoting"


def bootstrap(settings: ClusterSettings) -> Bootstrap:
    """initdb, or for a standby site's first member a base backup of the source site."""
    return Bootstrap(source_upstream(settings))


def bootstrap_message(settings: ClusterSettings) -> str:
    if settings.standby_cluster is not None:
        return "bootstrapping a standby site from its source"
    return "bootstrapping a new cluster"
