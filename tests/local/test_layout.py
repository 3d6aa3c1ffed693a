"""What `local up` writes and decides before starting anything: node files, ports, settings
seed, the state file, and the check that PostgreSQL's OS user can reach the directory."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import yaml

from pgwarden.config.errors import ConfigError
from pgwarden.config.exposure import api_credentials
from pgwarden.config.load import load_node_config
from pgwarden.errors import CliError
from pgwarden.local.layout import (
    NodePlan,
    OsUser,
    ProcRecord,
    State,
    can_search,
    cluster_name,
    free_ports,
    load_state,
    make_dir,
    node_config,
    save_state,
    seed_settings,
    unreachable_component,
    write_node_config,
)
from tests.cli.helpers import run_cli


def test_cluster_name(tmp_path: Path) -> None:
    assert cluster_name(tmp_path / "demo-1") == "demo-1"
    assert cluster_name(tmp_path / "my demo") == "local"


def test_free_ports_are_distinct_and_avoid() -> None:
    ports = free_ports(20, avoid=[1])
    assert len(set(ports)) == 20 and 1 not in ports


def test_seed_settings() -> None:
    s = seed_settings("quorum", ["ttl=6", "parameters.max_connections=50", "maximum_lag_on_failover=0"])
    assert s.synchronous_mode == "quorum" and s.ttl == 6 and s.maximum_lag_on_failover == 0
    assert s.parameters == {"max_connections": "50"}
    with pytest.raises(ConfigError, match="did you mean 'ttl'"):
        seed_settings(None, ["tll=5"])


def test_node_config_round_trips_through_the_loader(tmp_path: Path) -> None:
    settings = seed_settings("on", ["ttl=6", "loop_wait=1.5"])
    plan = NodePlan("node2", 6002, 7002)
    doc = node_config(tmp_path, "demo", plan, ["127.0.0.1:2379"], settings, "su-secret", "re-secret",
                      "api-pw")
    path = tmp_path / "node2" / "pgwarden.yaml"
    write_node_config(path, doc)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # it holds passwords
    assert stat.S_IMODE((tmp_path / "node2").stat().st_mode) == 0o755
    cfg = load_node_config(path)
    assert (cfg.cluster, cfg.name) == ("demo", "node2")
    assert cfg.data_dir == tmp_path / "node2" / "data"
    assert cfg.log.file == tmp_path / "node2" / "agent.log"
    assert (cfg.postgresql.listen_address, cfg.postgresql.port, cfg.restapi.port) == ("127.0.0.1", 6002, 7002)
    assert cfg.postgresql.superuser.secret() == "su-secret"
    assert cfg.postgresql.replication.secret() == "re-secret"
    # The REST API is protected even on loopback: `local up` writes credentials into the 0600 file.
    auth = cfg.restapi.authentication
    assert auth is not None and cfg.restapi.insecure is False
    assert (auth.username, auth.secret()) == ("pgwarden", "api-pw")
    assert api_credentials(cfg, str(path)) == ("pgwarden", "api-pw")
    assert cfg.store.etcd is not None and cfg.store.etcd.hosts == ["127.0.0.1:2379"]
    assert cfg.timing == {"ttl": 6.0, "loop_wait": 1.5, "retry_timeout": 1.0}
    assert cfg.settings == {"synchronous_mode": "on"}
    assert cfg.initial_settings() == settings
    assert yaml.safe_load(path.read_text())["settings"] == {"synchronous_mode": "on"}


def test_make_dir_ignores_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        make_dir(tmp_path / "a" / "b")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "a" / "b").stat().st_mode) == 0o755


def fake_stat(mode: int, uid: int, gid: int) -> os.stat_result:
    return os.stat_result((stat.S_IFDIR | mode, 0, 0, 1, uid, gid, 0, 0, 0, 0))


def test_can_search_applies_exactly_one_permission_class() -> None:
    pg = OsUser("postgres", 101, frozenset({104, 103}))
    assert can_search(fake_stat(0o700, 101, 0), pg)  # owner
    assert not can_search(fake_stat(0o077, 101, 0), pg)  # owner bits rule, even if others may
    assert can_search(fake_stat(0o710, 0, 103), pg)  # a supplementary group
    assert not can_search(fake_stat(0o701, 0, 104), pg)  # group bits rule for a group member
    assert can_search(fake_stat(0o701, 0, 0), pg)  # other
    assert not can_search(fake_stat(0o750, 0, 0), pg)
    missing = OsUser("nobody-yet", None, frozenset())  # the agent will create it: "other" applies
    assert can_search(fake_stat(0o755, 0, 0), missing) and not can_search(fake_stat(0o750, 0, 0), missing)


def test_unreachable_component(open_dir: Path) -> None:
    user = OsUser("someone", 54321, frozenset({54321}))
    (open_dir / "open").mkdir(mode=0o755)
    (open_dir / "closed").mkdir()
    (open_dir / "closed").chmod(0o700)
    assert unreachable_component(open_dir / "open" / "not" / "yet", user) is None
    assert unreachable_component(open_dir / "closed" / "x", user) == open_dir / "closed"


@pytest.mark.skipif(os.geteuid() != 0, reason="the OS-user check applies when running as root")
def test_local_up_refuses_a_dir_the_os_user_cannot_reach(open_dir: Path) -> None:
    closed = open_dir / "closed"
    closed.mkdir(mode=0o700)
    blocked = closed / "sub"
    r = run_cli("local", "up", "--nodes", "3", "--dir", str(blocked / "demo"))
    assert r.code == 2
    assert len(r.err.strip().splitlines()) == 1
    assert "OS user 'postgres'" in r.err and f"cannot enter {closed} (mode 700)" in r.err
    assert "/var/lib/pgwarden/local" in r.err
    assert not blocked.exists()


def test_state_round_trip(tmp_path: Path) -> None:
    state = State(str(tmp_path), "demo", {
        "etcd": ProcRecord("etcd", "etcd", ["etcd", "--data-dir", "/x"], "/x.log", "/x", 10,
                           {"client": 1, "peer": 2}),
        "node10": ProcRecord("node10", "agent", ["a"], "l", "m", None, {"postgresql": 3}, "c", 1),
        "node2": ProcRecord("node2", "agent", ["a"], "l", "m2", 12, {}, "c2", 1),
    })
    save_state(tmp_path, state)
    loaded = load_state(tmp_path)
    assert loaded == state
    assert [a.name for a in loaded.agents()] == ["node2", "node10"]
    assert loaded.etcd_hosts() == ["127.0.0.1:1"]


def test_state_garbage_is_a_clear_error(tmp_path: Path) -> None:
    assert load_state(tmp_path) is None
    (tmp_path / "state.json").write_text("{not json")
    with pytest.raises(CliError, match="not a pgwarden local state file"):
        load_state(tmp_path)


def test_commands_on_a_dir_without_cluster(open_dir: Path) -> None:
    for cmd in (["status"], ["dsn"], ["down"], ["stop", "node1"], ["start", "node1"]):
        r = run_cli("local", cmd[0], "--dir", str(open_dir), *cmd[1:])
        assert r.code == 1, cmd
        assert "holds no local cluster" in r.err and "pgwarden local up" in r.err


def test_up_refuses_a_non_empty_dir(open_dir: Path) -> None:
    (open_dir / "something").write_text("x")
    r = run_cli("local", "up", "--dir", str(open_dir))
    assert r.code == 1 and "is not empty" in r.err


def test_up_rejects_bad_settings_before_starting(open_dir: Path) -> None:
    d = open_dir / "c"
    r = run_cli("local", "up", "--dir", str(d), "--set", "synchronous_mod=on")
    assert r.code == 2 and "did you mean 'synchronous_mode'" in r.err
    assert not (d / "state.json").exists()
    r = run_cli("local", "up", "--dir", str(d), "--nodes", "0")
    assert r.code == 2 and "--nodes" in r.err


def test_node_files_name_the_bin_dir_local_up_was_given(tmp_path: Path) -> None:
    doc = node_config(tmp_path, "demo", NodePlan("node1", 6001, 7001), ["127.0.0.1:2379"],
                      seed_settings(None, []), "superuser-pw", "replication-pw", "api-password",
                      bin_dir=Path("/usr/lib/postgresql/15/bin"))
    assert doc["postgresql"]["bin_dir"] == "/usr/lib/postgresql/15/bin"
    plain = node_config(tmp_path, "demo", NodePlan("node1", 6001, 7001), ["127.0.0.1:2379"],
                        seed_settings(None, []), "superuser-pw", "replication-pw", "api-password")
    assert "bin_dir" not in plain["postgresql"]


def test_local_up_refuses_a_bin_dir_without_postgres(open_dir: Path) -> None:
    r = run_cli("local", "up", "--dir", str(open_dir / "demo"), "--bin-dir", str(open_dir))
    assert r.code == 2
    assert len(r.err.strip().splitlines()) == 1 and "--bin-dir" in r.err and "no postgres" in r.err
    assert not any((open_dir / "demo").glob("node*"))
