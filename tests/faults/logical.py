"""The exact-rows check of rule 19, for a long randomized run of source failovers (kills and
partitions): after each fault has settled, a subscriber must hold exactly the rows the source's
primary holds — none missing, none extra, none applied twice. Not wired into `run.py` yet: that
needs a second (subscriber) cluster beside the fault harness's; `tests/integration/test_logical.py`
runs the same check after single failovers on real clusters.

Use: after `FaultCluster.wait_converged`, wait (bounded) until `row_problems` is empty for the
source primary's and the subscriber primary's `SELECT id FROM <table>`; report what is left."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import psycopg


def row_problems(source: Sequence[Any], subscriber: Sequence[Any]) -> list[str]:
    """What separates the subscriber's rows from the source primary's (empty: exactly equal)."""
    have = Counter(subscriber)
    want = set(source)
    out: list[str] = []
    missing = sorted(want - set(have))
    extra = sorted(set(have) - want)
    doubled = sorted(r for r, n in have.items() if n > 1)
    if missing:
        out.append(f"{len(missing)} rows missing on the subscriber, first {missing[:3]}")
    if extra:
        out.append(f"{len(extra)} rows on the subscriber that the source primary lacks, first {extra[:3]}")
    if doubled:
        out.append(f"{len(doubled)} rows applied more than once, first {doubled[:3]}")
    return out


def fetch_ids(conninfo: str, table: str) -> list[Any]:
    with psycopg.connect(conninfo, autocommit=True, connect_timeout=2) as c:
        return [r[0] for r in c.execute(f"SELECT id FROM {table}").fetchall()]
