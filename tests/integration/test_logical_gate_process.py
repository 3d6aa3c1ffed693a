"""The logical gate runs in a process of its own (gate/process.py, gate/supervisor.py), so what
happens to the agent does not happen to the subscriptions through it:

- a frozen agent (SIGSTOP) no longer freezes the gate: rows keep arriving through it;
- a killed agent leaves the gate serving, and the agent started again keeps that same process;
- a gate that dies is started again by its agent, and the subscription carries on through it;
- `local stop` after the agent was killed stops the gate it left behind;
- an agent whose gate cannot listen exits and says which port and why.

A source of two nodes on the embedded PostgreSQL, a one-node subscriber subscribing through
`ctl dsn --logical` (the gates of the source's members)."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgwarden.procinfo import cmdline, pid_alive
from tests.integration.test_logical import LOGICAL
from tests.support.cluster import Cluster, pgwarden
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration
_ids = itertools.count(1)


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[Cluster, Cluster]]:
    # A lease long enough that a frozen agent is not fenced (and failed over) while the test
    # watches rows go through its gate.
    with Cluster("gpsrc", nodes=2, sets=(*LOGICAL, "ttl=20")) as src, \
            Cluster("gpdst", nodes=1, sets=LOGICAL) as dst:
        primary = src.wait_primary()
        src.wait_replicas([n for n in src.names if n != primary])
        dst.wait_primary()
        src.sql(primary, "CREATE TABLE gp (id bigint PRIMARY KEY)")
        src.ctl("logical", "publish", "gp", "--tables", "public.gp")
        dsn = src.ctl("dsn", "--logical", "--with-password").stdout.strip().splitlines()[-1]
        assert str(src.config(primary)["postgresql"]["logical_gate_port"]) in dsn
        dst.ctl("logical", "subscribe", "gp", "--source", dsn, "--publications", "gp", "--copy-schema")
        yield src, dst


def arrives(src: Cluster, dst: Cluster, what: str, primary: str | None = None) -> None:
    """A new row on the source's primary reaches the subscriber through the gate."""
    n = next(_ids)
    src.sql(primary or src.wait_primary(), "INSERT INTO gp VALUES (%s)", (n,))
    wait_for(lambda: dst.sql(dst.wait_primary(), "SELECT count(*) FROM gp WHERE id = %s", (n,)) == [(1,)],
             30, f"row {n} at the subscriber {what}")


def gate_pid(src: Cluster, node: str) -> int:
    pid = src.gate_pid(node)
    assert pid is not None and b"pgwarden.gate.process" in cmdline(pid), (node, pid)
    return pid


def test_the_gate_is_a_process_of_its_own(pair: tuple[Cluster, Cluster]) -> None:
    src, dst = pair
    arrives(src, dst, "through the gate")
    for n in src.names:
        pid = gate_pid(src, n)
        assert pid != src.agent_pid(n)
        assert os.getsid(pid) == pid  # its own session: the agent's end is not its end
        # kill_node (a node crash in many tests) finds all three, each checked to be the node's
        assert src.node_pids(n) == [src.agent_pid(n), pid, src.postmaster_pid(n)]


def test_a_frozen_agent_does_not_freeze_its_gate(pair: tuple[Cluster, Cluster]) -> None:
    src, dst = pair
    primary = src.wait_primary()
    agent = src.agent_pid(primary)
    os.kill(agent, signal.SIGSTOP)
    try:
        for _ in range(3):  # well inside the lease: nobody fails over meanwhile
            arrives(src, dst, "while the source primary's agent is frozen", primary)
        other = next(n for n in src.names if n != primary)
        assert src.sql(other, "SELECT pg_is_in_recovery()") == [(True,)]  # still the only primary
    finally:
        os.kill(agent, signal.SIGCONT)
    assert src.primaries() == [primary]


def test_a_killed_agent_leaves_its_gate_serving_and_the_next_one_keeps_it(
        pair: tuple[Cluster, Cluster]) -> None:
    src, dst = pair
    primary = src.wait_primary()
    gate = gate_pid(src, primary)
    os.kill(src.agent_pid(primary), signal.SIGKILL)
    wait_for(lambda: not pid_alive(src.agent_pid(primary)), 10, "the agent gone")
    arrives(src, dst, "while the source primary's agent is dead", primary)  # inside its lease
    src.start_node(primary)
    wait_for(lambda: (src.status(primary) or {}).get("role") == "primary", 60, f"{primary} leading again")
    assert gate_pid(src, primary) == gate, "the new agent started another gate"
    arrives(src, dst, "after the agent came back")


def test_a_dead_gate_is_started_again_by_its_agent(pair: tuple[Cluster, Cluster]) -> None:
    src, dst = pair
    primary = src.wait_primary()
    old = gate_pid(src, primary)
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: src.gate_pid(primary) not in (None, old) and pid_alive(src.gate_pid(primary)),
             30, "a new gate process")
    arrives(src, dst, "through the new gate")


def test_local_stop_stops_the_gate_a_killed_agent_left_behind(pair: tuple[Cluster, Cluster]) -> None:
    src, _ = pair
    replica = next(n for n in src.names if n not in src.primaries())
    gate = gate_pid(src, replica)
    os.kill(src.agent_pid(replica), signal.SIGKILL)
    wait_for(lambda: not pid_alive(src.agent_pid(replica)), 10, "the agent gone")
    out = pgwarden("local", "stop", "--dir", str(src.dir), replica).stderr  # progress goes there
    assert f"stopped {replica}'s logical gate (pid {gate})" in out, out
    assert not cmdline(gate)
    # Files naming PIDs outlive the processes; a PID reused by anything else is never the node's
    # (kill_node would otherwise SIGKILL it: a session's ZooKeeper server, say).
    other = subprocess.Popen(["sleep", "60"])
    try:
        run_dir = Path(str(src.config(replica)["data_dir"]) + ".pgwarden")
        (run_dir / "gate.pid").write_text(str(other.pid))
        (Path(src.config(replica)["data_dir"]) / "postmaster.pid").write_text(f"{other.pid}\n")
        assert src.node_pids(replica) == []
    finally:
        other.kill()
        other.wait()
        (Path(src.config(replica)["data_dir"]) / "postmaster.pid").unlink()
    src.start_node(replica)
    src.wait_replicas([replica])
    assert gate_pid(src, replica) != gate


def test_an_agent_whose_gate_port_is_taken_stops_and_says_so(pair: tuple[Cluster, Cluster]) -> None:
    src, _ = pair
    replica = next(n for n in src.names if n not in src.primaries())
    port = int(src.config(replica)["postgresql"]["logical_gate_port"])
    src.stop_node(replica)
    squatter = socket.socket()
    try:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        src.start_node(replica)  # `local start` spawns the agent; the agent then gives up
        agent = src.agent_pid(replica)
        wait_for(lambda: not pid_alive(agent), 30, "the agent to exit")
        log = (src.dir / replica / "agent.log").read_text()
        assert f"pgwarden: error: postgresql.logical_gate_port {port}: the logical gate did not start: " \
               f"cannot listen on 127.0.0.1:{port}" in log and "give the gate a free port" in log, log[-2000:]
    finally:
        squatter.close()
    src.start_node(replica)
    src.wait_replicas([replica])
    assert gate_pid(src, replica)
