"""synchronous_mode on and quorum — a writer records every acknowledged commit; after a SIGKILL of the
primary (agent and postmaster) the new primary has every one of them (SAFETY rules 6, 7), and took
over by the confirmed-crash fast path (rule 16)."""

from __future__ import annotations

import pytest

from tests.support.cluster import Cluster
from tests.support.wait import wait_for
from tests.support.writer import Writer

pytestmark = pytest.mark.integration


def promotion_reason(cl: Cluster, new: str) -> str:
    """Why `new` was promoted, as the timeline history it published says."""
    def entry() -> str | None:
        hist = cl.http("GET", new, "/history")[1]
        mine = [e for e in hist if e.get("new_leader") == new] if isinstance(hist, list) else []
        return str(mine[-1]["reason"]) if mine else None
    return wait_for(entry, 30, f"{new}'s promotion in the history")


@pytest.mark.parametrize("mode", ["on", "quorum", "on+failsafe"])
def test_no_acknowledged_commit_is_lost_after_a_crash_failover(mode: str) -> None:
    sync, _, failsafe = mode.partition("+")
    sets = ("failsafe=on",) if failsafe else ()
    with Cluster(f"sync-{sync}{'-fs' if failsafe else ''}", sync=sync, sets=sets) as cl:
        old = cl.wait_primary()
        cl.wait_replicas([n for n in cl.names if n != old])
        if failsafe:  # rule 17's votes must be asked and given for the fast path to go ahead
            wait_for(lambda: len((cl.status(old) or {}).get("failsafe_members") or []) == 3,
                     30, "the failsafe set in the store")

        def promised() -> list[str]:
            st = cl.http("GET", old, "/cluster")[1]
            sync = st.get("sync") or {}
            members: list[str] = sync.get("members") or []
            return members
        wait_for(promised, 30, "a synchronous standby in the store")
        wait_for(lambda: cl.sql(old, "SHOW synchronous_standby_names")[0][0] not in ("", None), 15,
                 "the primary waiting for its synchronous standby")

        writers = [Writer(cl.dsn(), table="sync_acks", writer_id=i) for i in range(2)]
        writers[0].prepare()
        for w in writers:
            w.start(max_seconds=90)
        wait_for(lambda: all(len(w.acks) > 30 for w in writers), 20, "writes flowing")
        cl.kill_node(old)
        new = cl.wait_primary(timeout=60, exclude=(old,))
        port = str(cl.config(new)["postgresql"]["port"])
        wait_for(lambda: any(a.server.endswith(port) for a in writers[0].acks), 30,
                 "writes acknowledged by the new primary")
        for w in writers:
            w.stop()
        acked = sum(len(w.acks) for w in writers)
        missing = [i for w in writers for i in w.missing_on(cl.conninfo(new))]
        assert acked > 60
        assert missing == [], f"{len(missing)} acknowledged commits lost: {missing[:10]}"
        # Its node refused connections and no receiver stayed attached: the new primary took the
        # key over without waiting for the lease (rule 16), and says so in the history.
        assert "fast path" in promotion_reason(cl, new), "the confirmed-crash fast path was not taken"
