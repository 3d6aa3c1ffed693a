"""The raft store when members fail: a dead raft leader, a member cut off from the majority, a
restarted member, and two data members plus a witness process (the contract suite covers the rest)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from pgwarden.config.errors import ConfigError
from pgwarden.config.schema import RaftConfig
from pgwarden.core.model import ClusterView, FailoverRequest, HistoryEntry, SyncState
from pgwarden.store.base import StoreUnavailable
from pgwarden.store.cluster import ClusterStore
from pgwarden.store.documents import LAYOUT
from pgwarden.store.raft import RaftKV, acquire_node, open_client, release_node
from pgwarden.store.raft_kv import command
from tests.support.ports import free_port
from tests.support.raft import RaftGroup
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

T = 2.0
TTL = 2.0


@pytest.fixture
def group(tmp_path: Path) -> Iterator[RaftGroup]:
    with RaftGroup(tmp_path) as g:
        yield g


def test_lease_held_via_a_dead_member_expires_not_early(group: RaftGroup) -> None:
    leader = group.wait_for_leader()
    rest = [i for i in range(3) if i != leader]
    a = group.store("c", member=leader)
    b, c = group.store("c", member=rest[0]), group.store("c", member=rest[1])
    sent = time.monotonic()
    assert a.acquire_leader("a", TTL, T)
    group.stop(leader)  # the holder's member dies with it: nobody renews any more
    group.wait_for_leader(among=rest)
    while True:
        view = b.snapshot(T)
        read_done = time.monotonic()
        if view.leader is None:
            break
        assert view.leader.name == "a"
        assert read_done - sent < TTL + 5, "the dead member's lease did not expire"
        b.wait_for_change(0.2)
    # A read that ended before sent + ttl must still have shown the key (SAFETY rule 2).
    assert read_done >= sent + TTL
    assert b.acquire_leader("b", TTL, T)
    after = c.snapshot(T)
    assert after.leader is not None and after.leader.name == "b"


def test_renewed_lease_survives_a_raft_leader_change(group: RaftGroup) -> None:
    ttl = 4.0  # room for an election on a loaded machine
    leader = group.wait_for_leader()
    follower = next(i for i in range(3) if i != leader)
    a = group.store("c", member=follower)
    assert a.acquire_leader("a", ttl, T)
    assert a.renew_leader("a", ttl, T)
    last_ok = time.monotonic()
    group.stop(leader)
    # Keep renewing as the runner would; the new raft leader must not expire the key while its
    # holder keeps renewing, whatever the old leader's clock said.
    renewed_after_change = False
    while not renewed_after_change:
        assert time.monotonic() - last_ok < ttl, "no renewal succeeded within the ttl"
        sent = time.monotonic()
        try:
            renewed_after_change = a.renew_leader("a", ttl, min(1.0, ttl - (sent - last_ok)))
            assert renewed_after_change, "the key was lost although it was renewed in time"
            last_ok = sent
        except StoreUnavailable:
            pass  # election in progress
    view = a.snapshot(T)
    assert view.leader is not None and view.leader.name == "a"


@pytest.mark.parametrize("role", ["leader", "follower"])
def test_member_cut_off_from_the_majority_cannot_renew_or_read(group: RaftGroup, role: str) -> None:
    leader = group.wait_for_leader()
    me = leader if role == "leader" else next(i for i in range(3) if i != leader)
    a = group.store("c", member=me)
    assert a.acquire_leader("a", TTL, T)
    assert a.renew_leader("a", TTL, T)
    for i in range(3):
        if i != me:
            group.stop(i)
    timeout = 1.0
    started = time.monotonic()
    try:
        assert not a.renew_leader("a", TTL, timeout)
    except StoreUnavailable:
        pass
    assert time.monotonic() - started < timeout + 0.5
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        a.snapshot(timeout)
    assert time.monotonic() - started < timeout + 0.5


def test_restarted_member_catches_up_from_its_journal(group: RaftGroup) -> None:
    a = group.store("c", member=0)
    assert a.set_initialized("7300000000000000001", T)
    group.stop(2)
    group.wait_for_leader(among=[0, 1])
    history = (HistoryEntry(1, 0x3000060, "switchover", None, "b"),)
    a.set_history(history, T)
    back = group.store("c", member=2)  # a new node on member 2's address and journal
    view = wait_for(lambda: back.snapshot(T), 15, "the restarted member to serve reads")
    assert view.initialized == "7300000000000000001"
    assert view.history == history


def test_a_take_over_is_one_command_a_restarted_member_replays(group: RaftGroup) -> None:
    """`KV.take_over` is one log entry of primitives (readable by any pgwarden, as every
    command): a member restarted on its journal shows the key and the synchronous document
    exactly as the others do, both written at the take-over's revision."""
    cmd = command("take_over", "c", "leader", rid="r", value="b", owner="o", ttl=TTL, cond="version",
                  arg=7, also=[["sync", "{}", 3], ["failsafe", "[]", None]])
    assert json.loads(json.dumps(cmd)) == cmd
    a, b, c = (group.store("c", member=i) for i in range(3))
    assert a.acquire_leader("a", TTL, T)
    assert a.set_sync(SyncState("a", frozenset({"b"}), 1), None, T)
    view = c.snapshot(T)
    assert view.leader is not None and view.sync is not None
    new_sync = SyncState("b", frozenset({"a"}), 1)
    assert b.take_over_leader("b", view.leader.token, new_sync, view.sync.token, TTL, T)

    def taken_over() -> ClusterView | None:
        v = c.snapshot(T)
        return v if v.leader is not None and v.leader.name == "b" else None

    taken = wait_for(taken_over, 10, "member 2 to apply the take-over")
    assert taken.sync is not None and taken.sync.token != view.sync.token
    assert taken.leader is not None and taken.leader.token == taken.sync.token  # one revision
    group.stop(2)
    group.wait_for_leader(among=[0, 1])
    assert b.renew_leader("b", TTL, T) and not a.renew_leader("a", TTL, T)
    back = group.store("c", member=2)
    again = wait_for(lambda: back.snapshot(T), 15, "the restarted member to serve reads")
    assert again.leader == taken.leader and again.sync == taken.sync


def test_client_reads_and_writes_without_a_vote(group: RaftGroup) -> None:
    a = group.store("c", member=0)
    assert a.acquire_leader("a", TTL, T)
    client = ClusterStore(open_client(group.configs[0], "c", LAYOUT))  # as ctl beside member 0's agent would
    try:
        view = wait_for(lambda: client.snapshot(T), 15, "the client to reach the group")
        assert view.leader is not None and view.leader.name == "a"
        assert client.set_failover(FailoverRequest("switchover", "a", None, None), None, T)
        assert a.wait_for_change(5.0)
        got = a.snapshot(T).failover
        assert got is not None and got.kind == "switchover"
        group.stop(1)
        group.stop(2)
        # Member 0 and the client are not a majority: the client never votes or counts.
        with pytest.raises(StoreUnavailable):
            client.snapshot(1.0)
    finally:
        client.close()


def _get_health(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as resp:
            json.load(resp)
            return int(resp.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def test_two_data_members_and_a_witness_survive_the_loss_of_one(tmp_path: Path) -> None:
    addrs = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    cfgs = [RaftConfig(self_addr=a, partner_addrs=[b for b in addrs if b != a], data_dir=tmp_path / f"r{i}")
            for i, a in enumerate(addrs)]
    api_port = free_port()
    conf = tmp_path / "witness.yaml"
    conf.write_text(yaml.safe_dump({
        "cluster": "c", "name": "w",
        "store": {"raft": {"self_addr": addrs[2], "partner_addrs": addrs[:2],
                           "data_dir": str(tmp_path / "w")}},
        "restapi": {"port": api_port},
    }))
    witness = subprocess.Popen([sys.executable, "-m", "pgwarden", "witness", "-c", str(conf)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    nodes = [acquire_node(cfgs[0]), acquire_node(cfgs[1])]
    store: ClusterStore | None = None
    try:
        health = f"http://127.0.0.1:{api_port}/health"
        wait_for(lambda: _get_health(health) == 200, 20, "the witness to join a group with a leader")
        store = ClusterStore(RaftKV(cfgs[0], "c", LAYOUT))
        assert store.acquire_leader("a", TTL, T)
        nodes[1].stop()  # one data member lost: member 0 and the witness are a majority
        wait_for(lambda: store is not None and store.renew_leader("a", TTL, 1.0), 15,
                 "a renewal committed by member 0 and the witness")
        witness.terminate()
        assert witness.wait(10) == 0
        with pytest.raises(StoreUnavailable):  # alone now: no majority, no renewal
            store.renew_leader("a", TTL, 1.0)
    finally:
        if witness.poll() is None:
            witness.kill()
            witness.wait()
        if store is not None:
            store.close()
        for n in nodes:
            release_node(n)
        assert witness.stderr is not None
        witness.stderr.close()


def test_an_agent_or_witness_without_data_dir_is_refused() -> None:
    """A member that forgets its term and vote on restart can vote twice in one term."""
    from pgwarden.config.errors import ConfigError
    from pgwarden.config.schema import StoreConfig
    from pgwarden.store.factory import open_store

    cfg = StoreConfig(raft=RaftConfig(self_addr="127.0.0.1:1", partner_addrs=["127.0.0.1:2"]))
    with pytest.raises(ConfigError, match=r"store\.raft\.data_dir: required"):
        open_store(cfg, "c")


def test_a_client_without_the_group_secret_is_not_heard(group: RaftGroup, tmp_path: Path) -> None:
    """store.raft.password_file: the group's traffic is encrypted and authenticated, so a node
    with another secret (or none) reads nothing and writes nothing."""
    a = group.store("c", member=0)
    assert a.acquire_leader("a", TTL, T)
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-the-group-secret\n")
    for secret in (wrong, None):
        cfg = RaftConfig(self_addr=group.configs[0].self_addr, partner_addrs=group.configs[0].partner_addrs,
                         password_file=secret)
        outsider = ClusterStore(open_client(cfg, "c", LAYOUT))
        try:
            with pytest.raises(StoreUnavailable):
                outsider.snapshot(3.0)
        finally:
            outsider.close()
    # The members themselves still work together (the leader key has lapsed meanwhile: ttl 2 s).
    b = group.store("c", member=1)
    assert b.set_failover(FailoverRequest("switchover", "a", None, None), None, T)
    got = group.store("c", member=2).snapshot(T).failover
    assert got is not None and got.kind == "switchover"


def test_an_unreadable_or_empty_secret_is_one_clear_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty.password"
    empty.write_text("\n")
    for path, says in ((tmp_path / "missing", "cannot read"), (empty, "is empty")):
        cfg = RaftConfig(self_addr=f"127.0.0.1:{free_port()}", partner_addrs=[f"127.0.0.1:{free_port()}"],
                         data_dir=tmp_path / "d", password_file=path)
        with pytest.raises(ConfigError, match=rf"store\.raft\.password_file: .*{says}"):
            RaftKV(cfg, "c", LAYOUT)
