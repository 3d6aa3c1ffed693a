"""Parse synchronous_standby_names as the server runs it (SHOW, current_setting) into a SyncConfig.

The grammar is PostgreSQL's (syncrep_scanner.l, syncrep_gram.y)::

    value   := '' | list | NUM '(' list ')' | FIRST NUM '(' list ')' | ANY NUM '(' list ')'
    list    := name (',' name)*
    name    := identifier | NUM | '*' | '"' quoted ('""' is one '"') '"'

ANY and FIRST are case-insensitive keywords; unquoted names keep their case. A bare list means
FIRST 1, and `k (...)` FIRST k.

A SyncConfig says "each commit waits for `quorum` of `members`". FIRST k (...) waits for k listed
standbys chosen by priority, which is one of the ways ANY k (...) may be satisfied, so reading it
as SyncConfig(k, members) claims no more than the server enforces. A list holding the wildcard
can be satisfied by any standby: it reads as SyncConfig(k, {'*'}).
"""

from __future__ import annotations

import logging
import re

from pgwarden.core.model import NO_SYNC, SyncConfig

log = logging.getLogger("pgwarden.postgres")

WILDCARD = "*"

_SPACE = re.compile(r"[ \t\n\r\f\v]+")
# [A-Za-z\200-\377_] in the server's bytes; any non-ASCII character in ours.
_IDENT = re.compile(r"[A-Za-z_\u0080-\U0010ffff][A-Za-z_0-9$\u0080-\U0010ffff]*")
_NUM = re.compile(r"[0-9]+")
_KEYWORDS = ("any", "first")


class SyncNamesError(ValueError):
    """A value PostgreSQL would not accept as synchronous_standby_names."""


# Tokens: (kind, text) with kind one of NAME, NUM, ANY, FIRST, '(', ')', ','.
Token = tuple[str, str]


def _tokens(value: str) -> list[Token]:
    out: list[Token] = []
    i, n = 0, len(value)
    while i < n:
        ch = value[i]
        m = _SPACE.match(value, i)
        if m:
            i = m.end()
            continue
        if ch in "(),":
            out.append((ch, ch))
            i += 1
            continue
        if ch == WILDCARD:
            out.append(("NAME", WILDCARD))
            i += 1
            continue
        if ch == '"':
            name: list[str] = []
            i += 1
            while True:
                end = value.find('"', i)
                if end < 0:
                    raise SyncNamesError(f"unterminated quoted name in {value!r}")
                name.append(value[i:end])
                if value.startswith('"', end + 1):  # "" inside quotes is one "
                    name.append('"')
                    i = end + 2
                    continue
                i = end + 1
                break
            out.append(("NAME", "".join(name)))
            continue
        m = _NUM.match(value, i) or _IDENT.match(value, i)
        if m is None:
            raise SyncNamesError(f"unexpected {ch!r} at offset {i} in {value!r}")
        word = m.group()
        if word[0].isdigit():
            out.append(("NUM", word))
        elif word.lower() in _KEYWORDS:
            out.append((word.upper(), word))
        else:
            out.append(("NAME", word))
        i = m.end()
    return out


def parse_sync_standby_names(value: str) -> SyncConfig:
    """The SyncConfig the server enforces for `value`; SyncNamesError when it is malformed."""
    if value == "":
        return NO_SYNC
    toks = _tokens(value)
    pos = 0

    def peek(offset: int = 0) -> str | None:
        return toks[pos + offset][0] if pos + offset < len(toks) else None

    def take(kind: str) -> str:
        nonlocal pos
        if peek() != kind:
            got = "the end" if pos >= len(toks) else repr(toks[pos][1])
            raise SyncNamesError(f"expected {kind} but found {got} in {value!r}")
        pos += 1
        return toks[pos - 1][1]

    def names() -> list[str]:
        nonlocal pos
        out: list[str] = []
        while True:
            if peek() in ("NAME", "NUM"):
                out.append(toks[pos][1])
                pos += 1
            else:
                take("NAME")  # raises with a useful message
            if peek() != ",":
                return out
            pos += 1

    if peek() in ("ANY", "FIRST"):
        pos += 1
        count: str | None = take("NUM")
    elif peek() == "NUM" and peek(1) == "(":
        count = take("NUM")
    else:
        count = None
    if count is None:
        members = names()
        quorum = 1
    else:
        take("(")
        members = names()
        take(")")
        quorum = int(count)
    if pos != len(toks):
        raise SyncNamesError(f"unexpected {toks[pos][1]!r} in {value!r}")
    if quorum <= 0:
        raise SyncNamesError(f"number of synchronous standbys must be positive in {value!r}")
    if WILDCARD in members:
        return SyncConfig(quorum, frozenset({WILDCARD}))
    return SyncConfig(quorum, frozenset(members))


# What a value this parser cannot read stands for: it enforces no promise (the wildcard) and
# equals no setting pgwarden would choose, so the leader's loop rewrites it.
UNREADABLE = SyncConfig(1, frozenset({WILDCARD, "<unreadable synchronous_standby_names>"}))


def read_live(value: str) -> SyncConfig:
    """parse_sync_standby_names for a value the server already accepted; UNREADABLE (logged)
    should this parser ever disagree with the server's."""
    try:
        return parse_sync_standby_names(value)
    except SyncNamesError as e:
        log.warning("cannot read the server's synchronous_standby_names: %s", e)
        return UNREADABLE


class LiveSyncTracker:
    """The server's live synchronous_standby_names as last seen (from postmaster `pid`) and the
    primary's LSN when it took effect (`applied_lsn`, PgView.sync_applied_lsn).

    The moment a setting takes effect is not observable; the LSN an answer reports the first
    time a setting is seen is no earlier than it, which is the conservative side: standbys must
    confirm a little more WAL. So a reload that may change the setting must be bracketed by
    answers (`reloading` forgets the setting when it may change), or an A -> B -> A change
    between two answers would keep A's old LSN although commits went out under B meanwhile.
    """

    def __init__(self) -> None:
        self.pid: int | None = None
        self.sync: SyncConfig | None = None
        self.names = ""
        self.applied_lsn: int | None = None

    def forget(self) -> None:
        self.sync = self.applied_lsn = None

    def reloading(self, to: SyncConfig) -> None:
        """A reload that makes the server run `to` (or not yet, or partly) is about to start."""
        if to != self.sync:
            self.sync = None

    def known(self, pid: int | None) -> SyncConfig | None:
        return self.sync if pid == self.pid else None

    def note(self, pid: int | None, names: str, in_recovery: bool, lsn: int | None) -> SyncConfig:
        """A healthy answer from postmaster `pid`: its live setting, role and current LSN."""
        sync = read_live(names)
        if pid != self.pid:
            self.pid = pid
            self.forget()
        if in_recovery:
            self.applied_lsn = None  # a standby enforces nothing; it starts counting when promoted
        elif sync != self.sync or self.applied_lsn is None:
            self.applied_lsn = lsn
        self.sync, self.names = sync, names
        return sync
