"""`pgwarden node ...` against real PostgreSQL in a `pgwarden local` cluster: an operator stops a
node's agent with `local stop` (or the node crashes) and works on its data by hand. The refusals
are what keep it safe: no promotion while another primary takes writes, no following across a
timeline fork, nothing while the node's own agent runs."""

from __future__ import annotations

import itertools
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.support.cluster import Cluster
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with Cluster("node-cmds") as cl:
        yield cl


def test_ctl_reinit_waits_until_the_replica_streams_again(cluster: Cluster) -> None:
    cl = cluster
    leader = cl.wait_primary()
    replica = next(n for n in cl.names if n != leader)
    cl.wait_replicas([replica])
    pid_before = cl.postmaster_pid(replica)
    # A file only this data directory has: a clone from the leader cannot bring it back. (An inode
    # number proves nothing: the file system may give the new PG_VERSION the freed one.)
    marker = Path(cl.config(replica)["data_dir"]) / "pgwarden-test-marker"
    marker.write_text("made before the reinit\n")
    res = cl.ctl("reinit", replica, "--force", "--timeout", "120")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert lines[0] == f"{replica}: reinitialize scheduled", res.stdout
    assert lines[-1].startswith(f"{replica}: reinitialized in ") and \
        lines[-1].endswith(f"; streaming from {leader}"), res.stdout
    # Not a terminal: a line per change of what the member does, polled twice a second. An empty
    # database clones in about a second, so which steps show varies (wiped, the base backup's
    # phases, cloning); some step between the request and the end always does.
    steps = ("uninitialized", "cloning from", "checkpoint", "estimating", "streaming database files",
             "transferring wal", "initializing", "stopped", "starting")
    assert any(k in ln for ln in lines[1:-1] for k in steps), res.stdout
    # The data directory was made again, not just restarted.
    assert not marker.exists()
    assert (marker.parent / "PG_VERSION").exists()
    # Right after the command returned, not later: the member streams, on a new postmaster.
    st = cl.status(replica)
    assert st is not None and (st["role"], st["state"], st["replication_state"]) == \
        ("replica", "running", "streaming"), st
    assert st["postmaster_pid"] != pid_before
    assert st["postgresql_log"] and st["postgresql_log"].endswith(".log")
    assert cl.primaries() == [leader]


def test_ctl_reinit_of_a_member_that_does_not_come_back_says_what_it_is_doing(cluster: Cluster) -> None:
    cl = cluster
    leader = cl.wait_primary()
    replica = [n for n in cl.names if n != leader][-1]
    cl.wait_replicas([replica])
    pid_before = cl.postmaster_pid(replica)
    # Far too short for a base backup: the command gives up and says what the member is doing.
    res = cl.ctl("reinit", replica, "--force", "--timeout", "0.3", check=False)
    assert res.returncode == 1, res.stdout
    err = res.stderr.strip().splitlines()[-1]
    assert err.startswith(f"pgwarden: error: {replica} did not come back as a streaming replica "
                          f"within 0.3 s: it is "), err
    assert "see its PostgreSQL log /" in err and f"ctl explain --member {replica}" in err, err

    def back() -> bool:  # the agent still finishes the reinit: a new postmaster that streams
        st = cl.status(replica)
        return st is not None and st["postmaster_pid"] not in (None, pid_before) and \
            (st["state"], st["replication_state"]) == ("running", "streaming")

    wait_for(back, 120, f"{replica} streaming again after its reinit")


def _one_line_refusal(res: subprocess.CompletedProcess[str], *words: str) -> None:
    assert res.returncode != 0, res.stdout
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("pgwarden: error: "), res.stderr
    for w in words:
        assert w in lines[0], lines[0]


def _in_recovery(cl: Cluster, node: str) -> bool:
    return bool(cl.sql(node, "SELECT pg_is_in_recovery()")[0][0])


def _has_row(cl: Cluster, node: str, value: int) -> bool:
    return bool(cl.sql(node, "SELECT count(*) FROM node_rows WHERE id = %s", (value,))[0][0] == 1)


def test_node_commands_refuse_what_is_unsafe_and_repair_a_crashed_primary(cluster: Cluster) -> None:
    cl = cluster
    old = cl.wait_primary()
    a, b = [n for n in cl.names if n != old]
    cl.wait_replicas([a, b])
    with psycopg.connect(cl.dsn(), autocommit=True) as c:
        c.execute("CREATE TABLE node_rows (id int)")
        c.execute("INSERT INTO node_rows VALUES (1)")
    wait_for(lambda: _has_row(cl, a, 1), 30, f"row 1 on {a}")

    # While a node's agent runs, the agent owns its PostgreSQL.
    _one_line_refusal(cl.node_cmd(b, "clone"), "agent", b)

    # With a's agent stopped (its PostgreSQL too), promoting a would make a second primary.
    cl.stop_node(a)
    _one_line_refusal(cl.node_cmd(a, "promote"), old)
    assert cl.primaries() == [old]

    # The primary's node crashes; b, the only candidate left, takes over on a new timeline.
    cl.kill_node(old)
    assert cl.wait_primary(timeout=60, exclude=(old,)) == b

    def history_ends_timeline_1() -> bool:
        return any(e["timeline"] == 1 for e in _history(cl))

    wait_for(history_ends_timeline_1, 30, "the new leader's history in the store")
    with psycopg.connect(cl.dsn(), autocommit=True) as c:
        c.execute("INSERT INTO node_rows VALUES (2)")

    # The crashed primary's data forked from b's timeline: following b needs a rewind first.
    _one_line_refusal(cl.node_cmd(old, "follow", "--upstream", b), "timeline", "rewind")
    # a stopped as a clean replica before the fork: it may follow b as it is.
    res = cl.node_cmd(a, "follow", "--upstream", b)
    assert res.returncode == 0, res.stderr
    assert f"following {b}" in res.stdout
    wait_for(lambda: _has_row(cl, a, 2), 30, f"row 2 streamed to {a}")

    # rejoin: pg_rewind the crashed primary onto b's timeline, start it as b's replica.
    res = cl.node_cmd(old, "rejoin")
    assert res.returncode == 0, res.stderr
    assert "rewound" in res.stdout or "cloned" in res.stdout, res.stdout
    assert _in_recovery(cl, old)
    wait_for(lambda: _has_row(cl, old, 2), 30, f"row 2 streamed to {old}")

    # clone with a progress callback (what `node clone` draws its bar from): the byte counts
    # only grow and end at the total.
    counts = _clone_with_progress(cl, a, b)
    assert counts and counts[-1][0] == counts[-1][1] > 1_000_000, counts
    assert all(x[0] <= y[0] for x, y in itertools.pairwise(counts)), counts
    assert all(done <= total for done, total in counts), counts

    # clone: a fresh copy of the leader, started as its replica.
    res = cl.node_cmd(a, "clone")
    assert res.returncode == 0, res.stderr
    assert f"cloned from {b}" in res.stdout
    # stderr is not a terminal: no bar, one line at the end.
    assert "pgwarden: copied " in res.stderr and f" MB from {b} in " in res.stderr, res.stderr
    assert _in_recovery(cl, a) and _has_row(cl, a, 2)

    # The agents take the hand-repaired nodes over as they are.
    cl.start_node(a)
    cl.start_node(old)
    cl.wait_replicas([a, old], timeout=120)
    assert cl.primaries() == [b]


def test_promote_by_hand_once_no_primary_is_left(cluster: Cluster) -> None:
    cl = cluster
    leader = cl.wait_primary()
    a, c = [n for n in cl.names if n != leader]
    cl.wait_replicas([a, c])
    # Running agents elect their own leader; an operator promoting by hand pauses them first.
    cl.ctl("pause")
    cl.stop_node(a)
    cl.stop_node(leader)

    def promoted() -> bool:
        # Refused until the departed leader's lease is gone; nothing is done before that.
        res = cl.node_cmd(a, "promote")
        return res.returncode == 0 and "promoted" in res.stdout

    wait_for(promoted, 30, f"{a} promoted by hand", interval=0.5)
    assert not _in_recovery(cl, a)
    assert _in_recovery(cl, c)
    # A second promotion anywhere is now refused: a is a writable primary.
    _one_line_refusal(cl.node_cmd(leader, "promote"), a)


def _history(cl: Cluster) -> list[dict[str, object]]:
    out: list[dict[str, object]] = json.loads(cl.ctl("history", "--format", "json").stdout)
    return out


def _clone_with_progress(cl: Cluster, node: str, source: str) -> list[tuple[int, int]]:
    """DataDirectory.clone(progress=...) on the stopped `node`, as `node clone` calls it."""
    from pgwarden.config.load import load_node_config
    from pgwarden.postgres.controller import PostgresController

    cfg = load_node_config(cl.config_path(node))
    pg = PostgresController(cfg, cfg.initial_settings)
    pg.stop("fast", 60)
    src = cl.config(source)["postgresql"]
    counts: list[tuple[int, int]] = []
    pg.clone(src.get("listen_address", "127.0.0.1"), int(src["port"]), 120,
             progress=lambda done, total: counts.append((done, total)))
    return counts
