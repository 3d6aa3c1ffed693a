"""Validation of operator requests (switchover, failover) against one store snapshot. Pure: the
REST API and the CLI both call it, so an operator gets the same answer from either.

The HA core re-checks at execution time; this is the early, friendly refusal.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pgwarden.core.model import ClusterView, FailoverRequest, MemberInfo, Role


class RequestError(ValueError):
    """The request cannot be accepted. `kind` says why: "invalid" (the request itself is wrong:
    HTTP 400) or "precondition" (the cluster's state does not allow it now: HTTP 412)."""

    def __init__(self, message: str, kind: Literal["invalid", "precondition"] = "precondition") -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind


def _when(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


def _member(view: ClusterView, name: str) -> MemberInfo:
    m = view.members.get(name)
    if m is None:
        names = ", ".join(sorted(view.members)) or "(none)"
        raise RequestError(f"no member named {name}; members: {names}")
    return m


def _healthy_replica(m: MemberInfo) -> bool:
    return m.running and m.state == "running" and m.role == Role.REPLICA


def _sync_on(view: ClusterView) -> bool:
    """Either synchronous mode: `on` and `quorum` both promote only within the store's set
    (`sync.may_take_over`, what the HA core checks when it carries a request out)."""
    return view.settings.synchronous


def _mode(view: ClusterView) -> str:
    return str(view.settings.synchronous_mode.value)


def _sync_members(view: ClusterView) -> frozenset[str]:
    return view.sync.members if view.sync is not None else frozenset()


def validate_switchover(
    view: ClusterView,
    leader: str | None,
    candidate: str | None,
    scheduled_at: float | None,
    now_wall: float,
) -> FailoverRequest:
    """A planned hand-over from the current leader to `candidate` (or the best replica when None),
    now or at `scheduled_at` (epoch seconds). Health checks are skipped for a scheduled switchover:
    they are made when it runs."""
    paused = view.settings.paused
    if scheduled_at is not None:
        if paused:
            raise RequestError("cannot schedule a switchover while the cluster is paused", "invalid")
        if scheduled_at < now_wall:
            raise RequestError(
                f"cannot schedule a switchover in the past ({_when(scheduled_at)}; now {_when(now_wall)})",
                "invalid",
            )
    if paused and not candidate:
        raise RequestError("the cluster is paused: a switchover needs a specific candidate", "invalid")
    if view.leader is None:
        raise RequestError("no leader in the cluster; a switchover needs one (use failover instead)")
    current = view.leader.name
    if leader and leader != current:
        raise RequestError(f"{leader} is not the leader; the leader is {current}")

    immediate = scheduled_at is None
    sync_set = _sync_members(view)
    if candidate:
        if candidate == current:
            raise RequestError(f"{candidate} is already the leader; choose another candidate", "invalid")
        m = _member(view, candidate)
        if m.tags.nofailover:
            raise RequestError(f"{candidate} is tagged nofailover and cannot become the leader")
        if immediate and not _healthy_replica(m):
            raise RequestError(
                f"{candidate} is not a running replica (role {m.role.value}, state {m.state})"
            )
        # SAFETY rule 7: in a synchronous mode only a member of the store's set may be promoted.
        if immediate and _sync_on(view) and candidate not in sync_set:
            listed = ", ".join(sorted(sync_set)) or "none"
            raise RequestError(
                f"{candidate} is not a synchronous standby (synchronous_mode is {_mode(view)}; "
                f"synchronous standbys: {listed})"
            )
    elif immediate:
        eligible = [
            m for name, m in view.members.items()
            if name != current and not m.tags.nofailover and _healthy_replica(m)
            and (not _sync_on(view) or name in sync_set)
        ]
        if not eligible:
            what = "synchronous standby" if _sync_on(view) else "replica"
            raise RequestError(f"switchover is not possible: no healthy {what} to take over")
    return FailoverRequest(kind="switchover", leader=current, candidate=candidate or None,
                           scheduled_at=scheduled_at)


def validate_failover(view: ClusterView, candidate: str, now_wall: float) -> FailoverRequest:
    """An operator-chosen promotion of `candidate`, with or without a current leader. Immediate
    only (`now_wall` is accepted for symmetry with switchover)."""
    if not candidate:
        raise RequestError("a failover needs a candidate", "invalid")
    m = _member(view, candidate)
    if view.leader is not None and view.leader.name == candidate:
        raise RequestError(f"{candidate} is already the leader", "invalid")
    if m.tags.nofailover:
        raise RequestError(f"{candidate} is tagged nofailover and cannot become the leader")
    sync_set = _sync_members(view)
    # SAFETY rule 7: promoting outside the sync set could lose acknowledged commits.
    if _sync_on(view) and sync_set and candidate not in sync_set:
        raise RequestError(
            f"{candidate} is not a synchronous standby (synchronous_mode is {_mode(view)}; "
            f"synchronous standbys: {', '.join(sorted(sync_set))})"
        )
    return FailoverRequest(kind="failover", leader=None, candidate=candidate, scheduled_at=None)


def failover_is_switchover(leader: str | None, candidate: str | None, scheduled: bool) -> bool:
    """How a failover request is carried out. Patroni's rule, which scripts in the wild rely on:
    a failover that names the current leader is a switchover (and may then be scheduled). One
    that does not must be immediate and name its candidate."""
    if leader:
        return True
    if scheduled:
        raise RequestError("a failover can't be scheduled; use a switchover", "invalid")
    if not candidate:
        raise RequestError("a failover needs a candidate", "invalid")
    return False


RESTART_ROLES = {"primary": Role.PRIMARY, "master": Role.PRIMARY, "replica": Role.REPLICA,
                 "standby_leader": Role.STANDBY_LEADER}


def validate_restart(member: MemberInfo, role: str | None, only_if_pending: bool) -> None:
    """The conditions a restart request may carry (Patroni's `role` and `restart_pending`): refuse
    when this node does not meet them. Whether and how the restart happens is the HA core's
    (core/commands.py)."""
    if role is not None:
        want = RESTART_ROLES.get(role)
        if want is None:
            raise RequestError("role must be primary, standby_leader or replica", "invalid")
        if member.role != want:
            raise RequestError(f"not restarted: this node is {member.role.value}, not {want.value}")
    if only_if_pending and not member.pending_restart:
        raise RequestError("not restarted: no restart is pending on this node")
