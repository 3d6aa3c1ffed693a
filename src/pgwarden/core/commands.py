"""Operators' local commands (POST /restart, POST /reinitialize), decided like everything else
(SAFETY rules 4, 12): pure, called by `decide` before the role-specific rules."""

from __future__ import annotations

from pgwarden.core.actions import Decision, RenewLease, StopPostgres, Wipe
from pgwarden.core.model import ClusterView, LocalCommand, Observation


def local_command(obs: Observation, view: ClusterView) -> Decision | None:
    """POST /restart and POST /reinitialize, decided here like everything else: a leader's restart
    renews first and only stops PostgreSQL; the next loop starts it in whatever role the rules
    then allow (as primary only under a still-valid lease, rule 12). None: carry on as usual."""
    me = obs.me.name
    leads = view.leader is not None and view.leader.name == me
    if obs.command == LocalCommand.REINITIALIZE:
        if leads or obs.lease.held:
            return Decision((), "reinitialize refused: this node holds the leader lease; switch over first")
        leader = view.members.get(view.leader.name) if view.leader is not None else None
        if leader is None or not leader.running:
            return Decision((), "reinitialize refused: no running leader to clone from")
        return Decision((StopPostgres("immediate", "reinitialize requested"), Wipe("reinitialize requested")),
                        f"reinitializing: wiping the data directory to clone it from {leader.name}")
    if obs.command == LocalCommand.RESTART and obs.pg.running:
        if leads and obs.lease.held:
            return Decision((RenewLease(), StopPostgres("fast", "restart requested", restart=True)),
                            "restart requested: stopping PostgreSQL; it starts again next loop")
        return Decision((StopPostgres("fast", "restart requested", restart=True),),
                        "restart requested: stopping PostgreSQL; it starts again next loop")
    return None
