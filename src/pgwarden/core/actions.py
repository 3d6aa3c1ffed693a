"""What the core asks the runner to do. The runner executes a decision's actions in order and
stops at the first that fails: later actions may rely on earlier ones (hold the lease before
promoting; fence before releasing the lease)."""

from __future__ import annotations

from dataclasses import dataclass, field

from pgwarden.core.logical import LogicalChange
from pgwarden.core.model import NO_SYNC, SyncConfig, SyncState


@dataclass(frozen=True)
class Upstream:
    name: str
    host: str
    port: int
    # A standby site's source (core/standby.py): a libpq DSN instead of one member's address.
    dsn: str = ""
    slot: str | None = None  # primary_slot_name for a DSN upstream


@dataclass(frozen=True)
class TakeInitLock:
    pass


@dataclass(frozen=True)
class Bootstrap:
    """initdb, start as primary, record the system id (and seed the cluster settings). With
    `site_source` (a standby site's first member): a base backup of the source site instead,
    started as a standby of it."""

    site_source: Upstream | None = None


@dataclass(frozen=True)
class AdoptExistingData:
    """Record the system id of data that was already here (store lost or first run on old data)."""

    system_id: str


@dataclass(frozen=True)
class Clone:
    source: Upstream


@dataclass(frozen=True)
class AcquireLease:
    """Take the leader key (compare-and-swap on "no leader"). `not_after` (monotonic): a failsafe
    candidate's lease taken later than this is released again at once (rule 17)."""

    not_after: float | None = None
    # The confirmed-crash fast path (rule 16): take over the key at this version instead of
    # creating it, rewriting the synchronous document at `sync_token` in the same step.
    over: str | None = None
    sync_token: str | None = None


@dataclass(frozen=True)
class RenewLease:
    pass


@dataclass(frozen=True)
class ReleaseLease:
    pass


@dataclass(frozen=True)
class ExtendLease:
    """The store is unreachable and a majority confirmed us (rule 17): move the lease deadline, and
    the fencer's, to `deadline` (monotonic). Never moves it back."""

    deadline: float


@dataclass(frozen=True)
class WriteFailsafeMembers:
    """Set the store's failsafe members (compare-and-swap on `token`; "" = create-only)."""

    members: frozenset[str]
    token: str


@dataclass(frozen=True)
class Promote:
    """Promote; the runner renews the lease right after and demotes at once if it is gone.
    `sync`: what the new primary waits for from its first commit (`sync.after_promotion`)."""

    sync: SyncConfig = NO_SYNC
    # Why, in words for the timeline history (`ctl history`): PostgreSQL's own reason for a
    # promotion is always "no recovery target specified". A description, not part of the
    # decision: two Promotes that differ only here are the same action.
    why: str = field(default="", compare=False)


@dataclass(frozen=True)
class Demote:
    """Stop accepting writes now (fast stop, immediate if that stalls) and run as a replica of
    `upstream` (None: read-only with no upstream yet)."""

    upstream: Upstream | None
    reason: str


@dataclass(frozen=True)
class StartPostgres:
    role: str  # "primary" | "replica"
    upstream: Upstream | None = None


@dataclass(frozen=True)
class StopPostgres:
    mode: str  # "fast" | "immediate"
    reason: str
    restart: bool = False  # an operator's restart: start it again next loop, even when paused


@dataclass(frozen=True)
class HoldClients:
    """Before a switchover demotes us: PAUSE the connection pooler pgwarden manages in front of
    us (none: nothing to do), so no transaction is cut off. Give up at `until` (monotonic), which
    leaves the demotion its time inside the lease (rules 2, 15)."""

    until: float


@dataclass(frozen=True)
class Wipe:
    """Delete the data directory (PostgreSQL stopped first): the next loop clones it afresh."""

    reason: str


@dataclass(frozen=True)
class Follow:
    """Point a running replica at another upstream (primary_conninfo + reload)."""

    upstream: Upstream


@dataclass(frozen=True)
class Rewind:
    source: Upstream


@dataclass(frozen=True)
class Reclone:
    source: Upstream
    reason: str


@dataclass(frozen=True)
class ApplySync:
    """Change what the primary waits for (synchronous_standby_names)."""

    config: SyncConfig


@dataclass(frozen=True)
class WriteSyncState:
    """Change the store's synchronous promise (compare-and-swap on `token`)."""

    state: SyncState
    token: str | None


@dataclass(frozen=True)
class EnsureSlots:
    """Physical slots: `names` are wanted now (the agent records when), `retained` were wanted
    recently and are kept a while longer (core/slots.py)."""

    names: frozenset[str]
    retained: frozenset[str] = frozenset()


@dataclass(frozen=True)
class PublishHistory:
    """Read the timeline history files of the current timeline into the store."""

    timeline: int


@dataclass(frozen=True)
class ClearFailover:
    pass


@dataclass(frozen=True)
class JoinSite:
    """Make this cluster a standby site of another (SAFETY rule 18): the site document's epoch
    becomes `epoch`, then the settings get standby_cluster {source: `dsn`}."""

    dsn: str
    epoch: int


@dataclass(frozen=True)
class RecordEpoch:
    """A standby site learns its source site's higher epoch, so its own promotion goes past it."""

    epoch: int


@dataclass(frozen=True)
class ApplyLogical:
    """Bring a publication or subscription to its declaration. Runs off the HA loop (it may
    wait on another cluster), so it never holds up a lease renewal (rule 15)."""

    change: LogicalChange


@dataclass(frozen=True)
class CopyLogicalSlots:
    """A standby (15, 16): write `source`'s state files of these logical slots into our
    pg_replslot, each only if our replay position is past that slot's (see core/slot_copies.py)."""

    names: frozenset[str]
    source: Upstream


@dataclass(frozen=True)
class AdvanceLogicalSlots:
    targets: tuple[tuple[str, int], ...]  # slot, LSN (never past our replay position)


@dataclass(frozen=True)
class DropLogicalSlots:
    names: frozenset[str]


@dataclass(frozen=True)
class SetStandbySlots:
    """17+ primary: synchronized_standby_slots names these members' physical slots, so no
    failover slot sends a change before they have it (reloaded only when it changes)."""

    members: frozenset[str]


Action = (
    TakeInitLock
    | Bootstrap
    | AdoptExistingData
    | Clone
    | AcquireLease
    | RenewLease
    | ReleaseLease
    | ExtendLease
    | WriteFailsafeMembers
    | Promote
    | Demote
    | StartPostgres
    | StopPostgres
    | Wipe
    | HoldClients
    | Follow
    | Rewind
    | Reclone
    | ApplySync
    | WriteSyncState
    | EnsureSlots
    | PublishHistory
    | ClearFailover
    | JoinSite
    | RecordEpoch
    | ApplyLogical
    | CopyLogicalSlots
    | AdvanceLogicalSlots
    | DropLogicalSlots
    | SetStandbySlots
)


@dataclass(frozen=True)
class Decision:
    actions: tuple[Action, ...]
    message: str
