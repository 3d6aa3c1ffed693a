"""What a stopping agent does with its lease once it has tried to stop PostgreSQL (pure).

Releasing the key lets a replica take over at once instead of after `ttl`; but a primary whose
PostgreSQL did not stop may still take writes, so then the key is kept and left to expire, by
which time the fencer has stopped the server (rules 1, 13)."""

from __future__ import annotations

from pgwarden.core.actions import Decision, ReleaseLease


def after_stop(holds_lease: bool, postgres_stopped: bool) -> Decision:
    if not holds_lease:
        return Decision((), "not the leader: nothing to hand over")
    if not postgres_stopped:
        return Decision((), "PostgreSQL did not stop: keeping the leader key until it expires (the "
                            "fencer stops the server at the lease deadline)")
    return Decision((ReleaseLease(),), "PostgreSQL stopped: releasing the leader key so a replica "
                                       "takes over at once")
