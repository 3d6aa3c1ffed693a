"""This node's view of its leader lease: deadline = send time of the last successful renewal +
ttl - margin (SAFETY rule 2). A late answer never moves the deadline past sent_at + ttl."""

from __future__ import annotations

from dataclasses import dataclass

from pgwarden.core.model import Lease
from pgwarden.core.settings import FENCE_BUDGET, LEASE_MARGIN


@dataclass
class LeaseKeeper:
    held: bool = False
    deadline: float = 0.0

    def renewed(self, sent_at: float, ttl: float) -> None:
        self.held = True
        self.deadline = sent_at + ttl - LEASE_MARGIN

    def shorten(self, deadline: float) -> bool:
        """Before a renewal whose ttl is shorter than the one the deadline came from: the store
        may move the key onto the shorter lease even if we never hear its answer. True if the
        deadline moved (earlier)."""
        if self.held and deadline < self.deadline:
            self.deadline = deadline
            return True
        return False

    def extend(self, deadline: float) -> None:
        """A majority confirmed us while the store was unreachable (rule 17, decided by the core):
        move a held lease's deadline forward; never revive a lost one, never move it back."""
        if self.held and deadline > self.deadline:
            self.deadline = deadline

    def valid(self, now: float) -> bool:
        """Held, with time left to stop PostgreSQL before the deadline (FENCE_BUDGET)."""
        return self.held and now < self.deadline - FENCE_BUDGET

    def lost(self) -> None:
        self.held = False
        self.deadline = 0.0

    def view(self, now: float) -> Lease:
        if self.held and now >= self.deadline:
            self.lost()
        return Lease(self.held, self.deadline)

    def call_timeout(self, now: float, retry_timeout: float) -> float:
        """Deadline for one store call: never past the point where we must already be fenced."""
        if not self.held:
            return retry_timeout
        return max(0.05, min(retry_timeout, self.deadline - now - 0.25))
