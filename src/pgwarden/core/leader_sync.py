"""The leader's synchronous-replication step each loop (rules 6-8): which standbys may be
synchronous, what to aim for, and the one safe next change (`sync.next_step`) as actions."""

from __future__ import annotations

from pgwarden.core import sync
from pgwarden.core.actions import Action, ApplySync, WriteSyncState
from pgwarden.core.model import ClusterView, Observation, SyncState


def _eligible_sync(obs: Observation, view: ClusterView) -> tuple[set[str], dict[str, int]]:
    lsn = obs.pg.lsn or 0
    eligible: set[str] = set()
    lag: dict[str, int] = {}
    for st in obs.pg.replication:
        m = view.members.get(st.name)
        # leaving_sync: about to restart to load slot copies (core/slot_copies.py).
        if m is None or m.tags.nosync or m.leaving_sync or st.state != "streaming":
            continue
        eligible.add(st.name)
        lag[st.name] = max(0, lsn - (st.flush_lsn or 0))
    return eligible, lag


def leader_sync_actions(obs: Observation, view: ClusterView) -> tuple[list[Action], str]:
    stored = view.sync
    promise = sync.Promise(stored.quorum, stored.members) if stored and not stored.empty else sync.NO_PROMISE
    if not view.settings.synchronous and promise.empty and obs.pg.sync.empty:
        return [], ""
    eligible, lag = _eligible_sync(obs, view)
    want = sync.desired_sync(view.settings, eligible, promise, lag, sync.sync_peers(view, obs.me.name))
    step = sync.next_step(obs.pg.sync, promise, want, obs.pg.replication, obs.pg.sync_applied_lsn)
    if stored is None and step.pg is not None and not step.pg.empty:
        # Rule 6: no record in the store means "no synchronous promise", under which any member
        # may be promoted. Before the primary acknowledges its first synchronous commit, record
        # that only this leader has them all (an empty set it owns); the standbys come next loop.
        return [WriteSyncState(SyncState(obs.me.name, frozenset(), 0), None)], \
            "recording this leader in the store before the first synchronous standby"
    out: list[Action] = []
    if step.store is not None:
        token = stored.token if stored else None
        out.append(WriteSyncState(SyncState(obs.me.name, step.store.members, step.store.quorum), token))
    if step.pg is not None:
        out.append(ApplySync(step.pg))
    return out, step.waiting
