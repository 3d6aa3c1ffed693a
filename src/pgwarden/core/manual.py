"""The rules for promoting a node by hand (`pgwarden node promote`, the repmgr-style command used
when no agent runs on it). Pure: the CLI gathers what it saw (store snapshot, which peers answered
as writable, the local server's timeline) and these functions say whether promoting would make a
second writable primary or fork a newer timeline (SAFETY rules 1, 9, 11).

The CLI looks first (`before_start`), may start the local server as a standby to learn its
timeline, then asks `fork_refusal`; each returns None when promoting is safe, or the reason not."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pgwarden.core.model import ClusterView, DataState
from pgwarden.core.settings import FailoverMode


@dataclass(frozen=True)
class Writable:
    """A server the CLI found accepting writes: a member (its /primary answered 200, or a
    read-write connection succeeded) or the upstream this node last streamed from."""

    name: str
    host: str
    port: int
    upstream: bool = False


def before_start(view: ClusterView, name: str, writable: Iterable[Writable], data: DataState,
                 data_dir: str) -> str | None:
    if view.leader is not None and view.leader.name != name:
        return (f"{view.leader.name} holds the leader lease, so its PostgreSQL may still take "
                f"writes; promoting {name} would make two primaries (use `pgwarden ctl "
                f"failover --candidate {name}`, or wait until the lease is gone)")
    # With no lease held, running agents elect a leader of their own: this node, promoted
    # without a lease and without its agent, would then be a second primary nobody fences.
    live = sorted(m for m in view.members if m != name)
    automatic = not view.settings.paused and view.settings.failover_mode != FailoverMode.MANUAL
    if live and automatic:
        return (f"the agents of {', '.join(live)} are running and would elect their own leader "
                f"beside {name}; pause the cluster first (`pgwarden ctl pause`), or start "
                f"{name}'s agent and use `pgwarden ctl failover --candidate {name}`")
    for w in writable:
        # The member we last streamed from may have no member key now (its agent stopped) and
        # still serve writes.
        via = f", which {name} streams from," if w.upstream else ""
        return (f"{w.name} ({w.host}:{w.port}){via} is still a writable primary; promoting {name} "
                f"would make two")
    if data is not DataState.VALID:
        return f"{name} has no valid data directory to promote ({data_dir}); use `pgwarden node clone`"
    return None


def fork_refusal(view: ClusterView, name: str, timeline: int | None) -> str | None:
    """Member keys vanish with their agents, so a primary promoted by hand elsewhere may be
    invisible; the history it published is not. A node behind the newest timeline the cluster
    reached would fork it, whoever serves that timeline now (rules 9, 11)."""
    newest = max((e.timeline + 1 for e in view.history), default=None)
    if newest is None or (timeline is not None and timeline >= newest):
        return None
    by = next((e.new_leader for e in view.history if e.timeline + 1 == newest), None)
    return (f"{name} is on timeline {timeline} but the cluster reached timeline {newest}"
            f"{f' (promoted {by})' if by else ''}, which may still take writes; promoting "
            f"{name} would fork it: make it follow or rejoin instead")
