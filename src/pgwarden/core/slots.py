"""Which physical replication slots a server keeps (pure). A member's key vanishes while it is
being cloned or restarted, and a slot dropped meanwhile would lose the WAL it needs when it comes
back: so a slot stays for SLOT_RETENTION after the last decision that wanted it."""

from __future__ import annotations

from collections.abc import Iterable

from pgwarden.core.actions import EnsureSlots
from pgwarden.core.model import Observation

SLOT_RETENTION = 600.0  # seconds


def ensure_slots(obs: Observation, wanted: Iterable[str]) -> EnsureSlots:
    """The slots for `wanted` now, and those wanted within SLOT_RETENTION before (by the times
    the agent recorded: `Observation.slots_wanted_at`)."""
    names = frozenset(wanted)
    retained = frozenset(n for n, t in obs.slots_wanted_at.items()
                         if n not in names and obs.now - t < SLOT_RETENTION)
    return EnsureSlots(names, retained)
