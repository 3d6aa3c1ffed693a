"""`pgwarden local up --store etcd|zookeeper|raft [--witness]` below the level of whole clusters
(those run in tests/integration/test_backends.py): refusals before anything starts, the raft
sections written into node and witness files, and a ZooKeeper started, stopped and restarted as a
component."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pgwarden.config.load import parse_node_config
from pgwarden.config.validate import validate
from pgwarden.config.witness import WitnessConfig
from pgwarden.errors import UsageError
from pgwarden.local.cluster import LocalCluster, Options
from pgwarden.local.layout import NodePlan, load_state, node_config, seed_settings
from pgwarden.local.witness import witness_config
from pgwarden.local.zookeeper import healthy, zookeeper_available


@pytest.mark.parametrize(("opts", "words"), [
    (Options(nodes=3, store="etcd", witness=True), "--witness needs --store raft"),
    (Options(nodes=3, store="zookeeper", witness=True), "--witness needs --store raft"),
    (Options(nodes=1, store="raft"), "at least two voters"),
    (Options(nodes=3, store="consul"), "--store must be one of"),
])
def test_impossible_store_choices_are_refused_before_anything_starts(
        open_dir: Path, opts: Options, words: str) -> None:
    d = open_dir / "c"
    with pytest.raises(UsageError, match=words):
        LocalCluster(d, out=lambda _: None).up(opts)
    assert not (d / "state.json").exists()


def test_raft_sections_name_every_other_voter_and_the_witness(open_dir: Path) -> None:
    cl = LocalCluster(open_dir / "r", out=lambda _: None)
    ports = list(range(20001, 20010))
    comps, docs, witness = cl._store_components(Options(nodes=2, store="raft", witness=True), None, ports,
                                                ["node1", "node2"])
    assert comps == [] and witness is not None
    assert ports == list(range(20004, 20010))  # three raft ports taken, the rest left for the nodes
    addrs = {"node1": "127.0.0.1:20001", "node2": "127.0.0.1:20002", "witness": "127.0.0.1:20003"}
    for name, doc in zip(["node1", "node2"], docs, strict=True):
        assert doc is not None
        raft = doc["raft"]
        assert raft["self_addr"] == addrs[name]
        assert sorted(raft["partner_addrs"]) == sorted(a for n, a in addrs.items() if n != name)
        assert raft["data_dir"] == str(cl.directory / name / "raft")
        # One shared secret for the group, in a 0600 file (the traffic is encrypted with it).
        secret = Path(raft["password_file"])
        assert secret == Path(witness["password_file"]) and secret.stat().st_mode & 0o077 == 0
        node_doc = node_config(cl.directory, "r", NodePlan(name, 1, 2), [], seed_settings(None, ()),
                               "pw-secret", "rp-secret", "api", store=doc)
        cfg = parse_node_config(node_doc, name)
        assert cfg.store.raft is not None and cfg.store.etcd is None
    wdoc = witness_config(cl.directory, "r", witness, 20009)
    wcfg = validate(WitnessConfig, wdoc)
    assert wcfg.store.raft is not None and wcfg.store.raft.self_addr == addrs["witness"]


@pytest.fixture
def zk_dir(open_dir: Path) -> Iterator[Path]:
    d = open_dir / "zk"
    yield d
    if (d / "state.json").exists():
        LocalCluster(d, out=lambda _: None).down(timeout=10)


@pytest.mark.integration
@pytest.mark.skipif(not zookeeper_available(), reason="no ZooKeeper (Debian's `zookeeper` package)")
def test_zookeeper_runs_as_the_stores_component(zk_dir: Path) -> None:
    cl = LocalCluster(zk_dir, out=lambda _: None)
    cl.up(Options(nodes=0, store="zookeeper", timeout=60))
    state = load_state(zk_dir)
    assert state is not None and set(state.procs) == {"zookeeper"}
    rec = state.procs["zookeeper"]
    assert rec.kind == "zookeeper" and rec.stage == 0 and healthy(rec.ports["client"])
    assert cl.store_kind() == "zookeeper"
    cl.stop("zookeeper", timeout=10)
    assert not healthy(rec.ports["client"])
    # `up` again starts the stopped cluster the same way; asking for another store is refused.
    again = LocalCluster(zk_dir, out=lambda _: None)
    with pytest.raises(Exception, match="store is zookeeper"):
        again.up(Options(nodes=0, store="raft"))
    again.up(Options(nodes=0, timeout=60))
    assert healthy(rec.ports["client"])
