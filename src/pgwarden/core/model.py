"""Immutable observations the HA core decides on: the store's snapshot, the local PostgreSQL view,
peers' fresh readings and the lease as this node knows it.

Everything here is plain data (frozen dataclasses). The adapters build these; the core reads them.
LSNs are integers (bytes), times are seconds: `now` on the monotonic clock, `wall` since the epoch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pgwarden.core.logical import LogicalObjects
from pgwarden.core.settings import ClusterSettings


class Role(StrEnum):
    PRIMARY = "primary"
    REPLICA = "replica"
    STANDBY_LEADER = "standby_leader"
    UNKNOWN = "unknown"


class DataState(StrEnum):
    """What the data directory holds, read without starting PostgreSQL."""

    EMPTY = "empty"  # missing or empty: needs bootstrap or clone
    VALID = "valid"  # a PostgreSQL data directory
    BROKEN = "broken"  # not empty, not usable (half-finished clone): wipe and re-clone


def lsn_to_int(text: str | None) -> int | None:
    """'16/B374D848' -> int. None stays None."""
    if not text:
        return None
    hi, _, lo = text.partition("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def int_to_lsn(value: int | None) -> str | None:
    if value is None:
        return None
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


@dataclass(frozen=True)
class Tags:
    nofailover: bool = False
    noloadbalance: bool = False
    nosync: bool = False
    replicatefrom: str | None = None
    failover_priority: int = 1

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> Tags:
        d = d or {}
        return cls(
            nofailover=bool(d.get("nofailover", False)),
            noloadbalance=bool(d.get("noloadbalance", False)),
            nosync=bool(d.get("nosync", False)),
            replicatefrom=d.get("replicatefrom") or None,
            failover_priority=int(d.get("failover_priority", 1)),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "nofailover": self.nofailover,
            "noloadbalance": self.noloadbalance,
            "nosync": self.nosync,
            "replicatefrom": self.replicatefrom,
            "failover_priority": self.failover_priority,
        }


@dataclass(frozen=True)
class MemberInfo:
    """What a member publishes under its member key (with a TTL) and serves at GET /status."""

    name: str
    api_url: str
    host: str
    port: int
    role: Role = Role.UNKNOWN
    state: str = "starting"
    running: bool = False
    timeline: int | None = None
    lsn: int | None = None  # primary: current WAL write LSN; replica: max(received, replayed)
    received_lsn: int | None = None
    replayed_lsn: int | None = None
    upstream: str | None = None  # member this replica streams from
    streaming: bool = False  # a replica whose WAL receiver streams from its upstream
    tags: Tags = Tags()
    agent_pid: int | None = None
    postmaster_pid: int | None = None
    version: str = ""
    pg_version: int | None = None
    pending_restart: bool = False
    # Logical slots this member holds (name, confirmed LSN): the primary's are what candidates
    # copy (core/slot_copies.py); a candidate's show whether it has them.
    logical_slots: tuple[tuple[str, int], ...] = ()
    native_slots: tuple[str, ...] = ()  # those PostgreSQL (17+) keeps on standbys itself (failover)
    logical_gate_port: int | None = None  # postgresql.logical_gate_port (`ctl dsn --logical`)
    # A primary: the members its synchronous_standby_names names now ("*": any standby). A
    # standby about to restart to load slot copies waits until it is not among them.
    waits_for: tuple[str, ...] = ()
    # A standby about to restart (to load slot copies): the leader stops choosing it as a
    # synchronous standby, so its restart holds up no commit (core/slot_copies.py).
    leaving_sync: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "api_url": self.api_url,
            "host": self.host,
            "port": self.port,
            "role": self.role.value,
            "state": self.state,
            "running": self.running,
            "timeline": self.timeline,
            "lsn": self.lsn,
            "received_lsn": self.received_lsn,
            "replayed_lsn": self.replayed_lsn,
            "upstream": self.upstream,
            "streaming": self.streaming,
            "tags": self.tags.to_dict(),
            "agent_pid": self.agent_pid,
            "postmaster_pid": self.postmaster_pid,
            "version": self.version,
            "pg_version": self.pg_version,
            "pending_restart": self.pending_restart,
            "logical_slots": dict(self.logical_slots),
            "native_slots": list(self.native_slots),
            "logical_gate_port": self.logical_gate_port,
            "waits_for": list(self.waits_for),
            "leaving_sync": self.leaving_sync,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MemberInfo:
        def opt_int(k: str) -> int | None:
            v = d.get(k)
            return None if v is None else int(v)

        role = d.get("role", "unknown")
        return cls(
            name=str(d["name"]),
            api_url=str(d.get("api_url", "")),
            host=str(d.get("host", "")),
            port=int(d.get("port", 0)),
            role=Role(role) if role in Role._value2member_map_ else Role.UNKNOWN,
            state=str(d.get("state", "unknown")),
            running=bool(d.get("running", False)),
            timeline=opt_int("timeline"),
            lsn=opt_int("lsn"),
            received_lsn=opt_int("received_lsn"),
            replayed_lsn=opt_int("replayed_lsn"),
            upstream=d.get("upstream"),
            streaming=bool(d.get("streaming", False)),
            tags=Tags.from_dict(d.get("tags")),
            agent_pid=opt_int("agent_pid"),
            postmaster_pid=opt_int("postmaster_pid"),
            version=str(d.get("version", "")),
            pg_version=opt_int("pg_version"),
            pending_restart=bool(d.get("pending_restart", False)),
            logical_slots=tuple(sorted((str(k), int(v)) for k, v in (d.get("logical_slots") or {}).items())),
            native_slots=tuple(sorted(str(n) for n in d.get("native_slots") or ())),
            logical_gate_port=opt_int("logical_gate_port"),
            waits_for=tuple(sorted(str(n) for n in d.get("waits_for") or ())),
            leaving_sync=bool(d.get("leaving_sync", False)),
        )


@dataclass(frozen=True)
class LeaderKey:
    name: str
    token: str  # opaque version for compare-and-swap (etcd mod_revision, zk version, ...)


@dataclass(frozen=True)
class SyncState:
    """The store's synchronous promise: every acknowledged commit is on at least `quorum` of
    `members`. `synchronous_mode: on` is the case quorum == len(members)."""

    leader: str | None
    members: frozenset[str]
    quorum: int
    token: str = ""

    @property
    def empty(self) -> bool:
        return self.quorum == 0 or not self.members


@dataclass(frozen=True)
class FailoverRequest:
    """A switchover (planned, leader named) or failover (operator-chosen candidate) request."""

    kind: str  # "switchover" | "failover"
    leader: str | None
    candidate: str | None
    scheduled_at: float | None  # epoch seconds; None = now
    token: str = ""


@dataclass(frozen=True)
class HistoryEntry:
    timeline: int  # the timeline that ended
    switch_lsn: int  # where it ended
    reason: str
    at: float | None = None  # epoch seconds
    new_leader: str | None = None


@dataclass(frozen=True)
class SiteState:
    """The site document (SAFETY rule 18, core/standby.py): this cluster's site epoch, raised by
    every promotion of a standby site, and the REST API URLs of the other sites' members."""

    epoch: int = 0
    peers: tuple[str, ...] = ()
    token: str = ""
    cluster: str = ""  # this cluster's name (ties between equal epochs are broken by name)


@dataclass(frozen=True)
class SiteReading:
    """Another site as its agents answered GET /site this loop (none reachable: reachable False)."""

    cluster: str
    reachable: bool
    epoch: int = 0
    writable: bool = False  # some member there runs PostgreSQL as a primary
    dsn: str = ""  # host=...,... port=...,... of its members, no credentials
    timeline: int | None = None  # its primary's timeline (writable sites)
    standby: bool = False  # every member that answered says its site is a standby site


@dataclass(frozen=True)
class ClusterView:
    """One read of everything the store holds for the cluster, taken once per loop."""

    initialized: str | None  # PostgreSQL system identifier, once bootstrapped
    init_holder: str | None  # member holding the initialise lock (bootstrap in progress)
    settings: ClusterSettings
    settings_token: str
    leader: LeaderKey | None
    members: Mapping[str, MemberInfo]
    sync: SyncState | None
    failover: FailoverRequest | None
    history: tuple[HistoryEntry, ...] = ()
    leader_lsn: int | None = None  # last LSN the leader published ("optime")
    site: SiteState = SiteState()
    # The members whose majority the failsafe counts (SAFETY rule 17; only the leader writes it,
    # one member at a time: core/failsafe.py), and its compare-and-swap token.
    failsafe_members: frozenset[str] = frozenset()
    failsafe_token: str = ""


@dataclass(frozen=True)
class ReplicationStat:
    """One row of pg_stat_replication on the primary."""

    name: str  # application_name = member name
    state: str  # streaming, catchup, ...
    sync_state: str  # async, sync, potential, quorum
    flush_lsn: int | None


@dataclass(frozen=True)
class SyncConfig:
    """What synchronous_standby_names currently enforces: ANY `quorum` of `members`.
    `members` == {'*'} means any standby."""

    quorum: int
    members: frozenset[str]

    @property
    def empty(self) -> bool:
        return self.quorum == 0 or not self.members


NO_SYNC = SyncConfig(0, frozenset())


@dataclass(frozen=True)
class PgView:
    """The local PostgreSQL as the agent saw it this loop."""

    data: DataState
    running: bool = False
    healthy: bool = False  # answered the health query within the bound
    in_recovery: bool | None = None
    system_id: str | None = None
    timeline: int | None = None
    lsn: int | None = None  # primary: write LSN; replica: max(received, replayed)
    received_lsn: int | None = None
    replayed_lsn: int | None = None
    # From pg_controldata while stopped: the last checkpoint's end and whether it was a primary.
    checkpoint_lsn: int | None = None
    was_primary: bool | None = None
    clean_shutdown: bool | None = None
    upstream: str | None = None  # member named in primary_conninfo
    streaming: bool = False
    sync: SyncConfig = NO_SYNC  # synchronous_standby_names as applied
    replication: tuple[ReplicationStat, ...] = ()
    postmaster_pid: int | None = None
    pending_restart: bool = False
    version: int | None = None
    # Set by the runner after a failed rewind, so the core asks for a re-clone instead.
    rewind_failed: bool = False
    # Primary's WAL position when the current synchronous_standby_names took effect: standbys
    # that flushed past it hold every commit acknowledged under the previous setting.
    sync_applied_lsn: int | None = None
    # Seconds the postmaster has been alive but failing the health query (0 when healthy).
    unhealthy_for: float = 0.0
    # Seconds a running replica has had no streaming WAL receiver (0 when streaming).
    not_streaming_for: float = 0.0
    # Starts as a replica that failed in a row (e.g. "not a child of this server's history").
    start_failures: int = 0
    # Publications, subscriptions and logical slots (None: not read this loop).
    logical: LogicalObjects | None = None
    # Logical slots this agent copied onto this standby, and on which timeline (slot_copies.py).
    slot_copies: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class PeerReading:
    """A member's own answer to GET /status, fetched this loop (fresher than its member key)."""

    name: str
    reachable: bool
    role: Role = Role.UNKNOWN
    running: bool = False
    timeline: int | None = None
    received_lsn: int | None = None
    replayed_lsn: int | None = None
    lsn: int | None = None


@dataclass(frozen=True)
class LeaderCheck:
    """One member's answer, read when asked, about the leader's node (SAFETY rule 16)."""

    name: str
    refused: bool  # the leader's PostgreSQL port and its REST port both refused a connection
    attached: bool  # its WAL receiver is attached to the leader (or it could not tell)


@dataclass(frozen=True)
class CrashEvidence:
    """What this loop gathered about a leader whose node looks gone (core/fast_path.py): the
    checks by member name, this node's own included; a member that did not answer is absent."""

    leader: str
    token: str  # the leader key's version the checks were made under
    checks: Mapping[str, LeaderCheck] = field(default_factory=dict)


@dataclass(frozen=True)
class Lease:
    """This node's knowledge of its own leader lease. `deadline` (monotonic) is
    sent_at + ttl - margin of the last renewal that succeeded (SAFETY rule 2)."""

    held: bool
    deadline: float = 0.0


@dataclass(frozen=True)
class FailsafeRound:
    """One round of failsafe confirmations this leader asked for while the store was unreachable:
    `sent_at` (monotonic) is when the requests went out, before any answer; `confirmed` are the
    members that confirmed, each answering within the round's deadline."""

    sent_at: float
    confirmed: frozenset[str]


@dataclass(frozen=True)
class Me:
    name: str
    tags: Tags
    host: str
    port: int
    api_url: str


class LocalCommand(StrEnum):
    """An operator's command for this node alone, carried out through a decision."""

    RESTART = "restart"
    REINITIALIZE = "reinitialize"


@dataclass(frozen=True)
class Observation:
    now: float
    wall: float
    me: Me
    pg: PgView
    store: ClusterView | None  # None: the store did not answer this loop
    lease: Lease
    peers: Mapping[str, PeerReading] = field(default_factory=dict)
    # Last settings the store gave us, for loops where the store does not answer.
    settings: ClusterSettings = field(default_factory=ClusterSettings)
    # How long this agent has seen the store answer with no leader, without a break (0 while
    # there is one). Bounds every wait a leaderless node makes for someone else to act.
    leaderless_for: float = 0.0
    # How long this agent has seen the store's current failover/switchover request (0: none).
    request_pending_for: float = 0.0
    # An operator's local command (POST /restart, POST /reinitialize) waiting for this loop;
    # the runner hands it to one decision and forgets it.
    command: LocalCommand | None = None
    # PostgreSQL was stopped for a requested restart and has not run since: start it again
    # even while paused (the operator asked for a restart, not a stop).
    restart_pending: bool = False
    # No loop of this agent has seen the store yet: a leader key naming us is one a previous run
    # of this agent held, which we may take back at once instead of demoting first (rule 5).
    first_look: bool = False
    # How long this candidate has had copies of the leader's logical slots to load, without a
    # break (0: none). Bounds its wait for the peers' turns (slot_copies.turn_holder).
    copies_pending_for: float = 0.0
    # Monotonic time each physical slot name was last in an EnsureSlots' `names` (core/slots.py).
    slots_wanted_at: Mapping[str, float] = field(default_factory=dict)
    # The other sites named in the site document, read this loop (core/standby.py).
    sites: tuple[SiteReading, ...] = ()
    # -- the majority failsafe (SAFETY rule 17, core/failsafe.py) --
    # Monotonic time until which a failsafe confirmation this node gave a leader binds it: no
    # lease for us, no vote for anyone (0: none in force).
    failsafe_bound_until: float = 0.0
    # The leader's confirmation round of this loop (store unreachable), None when none was asked.
    failsafe_round: FailsafeRound | None = None
    # The sets the leader must have a majority of: the failsafe members it last read, plus any
    # value it wrote since whose outcome it has not read back.
    failsafe_sets: tuple[frozenset[str], ...] = ()
    # A leaderless candidate's votes this loop: members that promised not to confirm a leader
    # for a while (None: not asked).
    failsafe_votes: frozenset[str] | None = None
    # When this loop's store read was sent (monotonic; None: use `now`): a failsafe candidate
    # must hold the lease within ttl of it.
    snapshot_at: float | None = None
    # Evidence that the leader's node crashed, gathered only when `fast_path.wants_check` (rule 16).
    crash: CrashEvidence | None = None

