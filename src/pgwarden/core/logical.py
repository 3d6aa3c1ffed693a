"""Declared logical replication (publications and subscriptions in the cluster settings) and the
leader's pure reconciliation of them against what its PostgreSQL holds.

pgwarden marks each object it manages with a comment `pgwarden:<digest>`, the digest of the
declaration it was made from. The reconciliation compares digests, never PostgreSQL's rendering
of row filters or column lists, so a declaration is applied once and changed only when the
operator changes it; an object of the same name without the mark is someone else's and is left
alone (reported, not clobbered).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field as dc_field

from msgspec import Struct, field, to_builtins

MARK = "pgwarden:"
# Unquoted SQL identifiers as pgwarden accepts them in names: what needs no quoting is also what
# cannot inject anything. Tables are schema-qualified: schema.table.
_IDENT = r"[a-z_][a-z0-9_$]{0,62}"
NAME_RE = re.compile(_IDENT)
TABLE_RE = re.compile(rf"{_IDENT}\.{_IDENT}")


class _Spec(Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    pass


class PublicationSpec(_Spec, frozen=True, kw_only=True):
    """A publication on this cluster: `tables` (schema.table), or every table (`all_tables`);
    `where` maps a table to a row filter, `columns` a table to the columns published."""

    name: str
    tables: tuple[str, ...] = ()
    all_tables: bool = False
    where: dict[str, str] = field(default_factory=dict)
    columns: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Tables without a primary key get REPLICA IDENTITY FULL (the operator asked for it).
    identity_full: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_name(self.name, "publication")
        if self.all_tables and (self.tables or self.where or self.columns):
            raise ValueError(f"publication {self.name}: all_tables takes no tables, row filters or columns")
        if not self.all_tables and not self.tables:
            raise ValueError(f"publication {self.name}: name some tables or set all_tables")
        for t in (*self.tables, *self.where, *self.columns, *self.identity_full):
            check_table(t)
        for t in (*self.where, *self.columns):
            if t not in self.tables:
                raise ValueError(f"publication {self.name}: {t} has a row filter or column list "
                                 f"but is not one of its tables")
        for t, cols in self.columns.items():
            if not cols:
                raise ValueError(f"publication {self.name}: empty column list for {t}")
            for c in cols:
                check_name(c, f"column of {t}")
        for t, expr in self.where.items():
            if not expr.strip() or ";" in expr or any(ch in expr for ch in "\n\r\0"):
                raise ValueError(f"publication {self.name}: the row filter of {t} must be one "
                                 f"expression on one line, without ';'")


class SubscriptionSpec(_Spec, frozen=True, kw_only=True):
    """A subscription on this cluster to `publications` of the cluster `source` (a libpq
    string; a multi-host one with target_session_attrs=read-write follows its primary)."""

    name: str
    source: str
    publications: tuple[str, ...]
    copy_data: bool = True
    copy_schema: bool = False

    def __post_init__(self) -> None:
        check_name(self.name, "subscription")
        if not self.publications:
            raise ValueError(f"subscription {self.name}: name at least one publication")
        for p in self.publications:
            check_name(p, "publication")
        if not self.source.strip() or any(ch in self.source for ch in "\n\r\0"):
            raise ValueError(f"subscription {self.name}: the source must be a libpq connection string")


def check_name(name: str, what: str) -> None:
    if not NAME_RE.fullmatch(name):
        raise ValueError(f"{what} name {name!r}: use lower-case letters, digits and _ "
                         f"(starting with a letter or _), at most 63 characters")


def check_table(name: str) -> None:
    if not TABLE_RE.fullmatch(name):
        raise ValueError(f"table {name!r}: write it as schema.table in lower case (e.g. public.orders)")


def digest(spec: PublicationSpec | SubscriptionSpec) -> str:
    """A stable fingerprint of a declaration: the mark of the object made from it."""
    data = json.dumps(to_builtins(spec), sort_keys=True, separators=(",", ":"))
    return MARK + hashlib.sha256(data.encode()).hexdigest()[:16]


def check_unique(pubs: tuple[PublicationSpec, ...], subs: tuple[SubscriptionSpec, ...]) -> None:
    for kind, names in (("publication", [p.name for p in pubs]), ("subscription", [s.name for s in subs])):
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"{kind} {sorted(dup)[0]} is declared twice")


# -- observation and reconciliation ------------------------------------------------------------


@dataclass(frozen=True)
class SlotInfo:
    """One logical slot on a server (not temporary, not a table-copy slot)."""

    confirmed_flush: int | None
    lost: bool = False  # its WAL is gone (wal_status lost): unusable
    failover: bool = False  # 17+: kept on standbys by PostgreSQL's slot-sync worker
    synced: bool = False  # 17+: a standby's copy made by that worker


@dataclass(frozen=True)
class LogicalObjects:
    """What a server holds: each publication's and subscription's comment (None: no comment),
    and its logical slots."""

    publications: Mapping[str, str | None]
    subscriptions: Mapping[str, str | None]
    slots: Mapping[str, SlotInfo] = dc_field(default_factory=dict)


@dataclass(frozen=True)
class CreatePublication:
    spec: PublicationSpec


@dataclass(frozen=True)
class ReplacePublication:
    """Change a managed publication to its new declaration (one transaction)."""

    spec: PublicationSpec


@dataclass(frozen=True)
class DropPublication:
    name: str


@dataclass(frozen=True)
class CreateSubscription:
    spec: SubscriptionSpec


@dataclass(frozen=True)
class AlterSubscription:
    """A managed subscription whose source or publications changed."""

    spec: SubscriptionSpec


@dataclass(frozen=True)
class DropSubscription:
    """Also drops its slot on the source (DROP SUBSCRIPTION does, when the source answers)."""

    name: str


LogicalChange = (CreatePublication | ReplacePublication | DropPublication | CreateSubscription
                 | AlterSubscription | DropSubscription)


def _managed(comment: str | None) -> bool:
    return comment is not None and comment.startswith(MARK)


def reconcile(pubs: tuple[PublicationSpec, ...], subs: tuple[SubscriptionSpec, ...],
              have: LogicalObjects) -> tuple[list[LogicalChange], list[str]]:
    """The changes that bring the primary to the declarations, and the conflicts left alone (an
    object of a declared name that pgwarden did not make). Drops come first (a name may be
    reused), subscriptions before publications (a subscription may read our own)."""
    changes: list[LogicalChange] = []
    conflicts: list[str] = []
    want_subs = {s.name: s for s in subs}
    want_pubs = {p.name: p for p in pubs}
    for name, comment in sorted(have.subscriptions.items()):
        if _managed(comment) and name not in want_subs:
            changes.append(DropSubscription(name))
    for name, comment in sorted(have.publications.items()):
        if _managed(comment) and name not in want_pubs:
            changes.append(DropPublication(name))
    for s in subs:
        comment = have.subscriptions.get(s.name, _ABSENT)
        if comment is _ABSENT:
            changes.append(CreateSubscription(s))
        elif not _managed(comment):
            conflicts.append(f"subscription {s.name} exists and was not made by pgwarden: left alone")
        elif comment != digest(s):
            changes.append(AlterSubscription(s))
    for p in pubs:
        comment = have.publications.get(p.name, _ABSENT)
        if comment is _ABSENT:
            changes.append(CreatePublication(p))
        elif not _managed(comment):
            conflicts.append(f"publication {p.name} exists and was not made by pgwarden: left alone")
        elif comment != digest(p):
            changes.append(ReplacePublication(p))
    return changes, conflicts


_ABSENT = "\0absent"


def failover_slots(source_major: int, subscriber_major: int) -> bool:
    """A subscription's slot is a failover slot (`failover = true`) when both sides run 17+."""
    return source_major >= 17 and subscriber_major >= 17


def window_reason(source_major: int, subscriber_major: int, sync_names: str, gated: bool) -> str | None:
    """Why a subscription could apply a transaction the source's synchronous standbys lack
    (docs/logical-replication.md, "The asynchronous window"), or None when it cannot: through a
    logical gate, with a failover slot (synchronized_standby_slots holds its walsender back), or
    with no synchronous standby at all. A subscriber before 17 cannot ask for a failover slot, so
    its slot on a 17+ source is an ordinary one that nothing holds back."""
    if gated or not sync_names or failover_slots(source_major, subscriber_major):
        return None
    if source_major >= 17:
        return (f"this subscriber runs PostgreSQL {subscriber_major}, which cannot make a failover "
                f"slot on the PostgreSQL {source_major} source with synchronous standbys ({sync_names})")
    return f"the source runs PostgreSQL {source_major} with synchronous standbys ({sync_names})"
