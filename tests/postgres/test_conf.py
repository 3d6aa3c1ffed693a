"""Rendering of postgresql.conf, pg_hba.conf, passfile and primary_conninfo (pure)."""

from __future__ import annotations

from pathlib import Path

from pgwarden.core.model import NO_SYNC, SyncConfig
from pgwarden.postgres import conf
from pgwarden.postgres.provision import parse_history


def _params(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        k, _, v = line.partition(" = ")
        out[k] = v
    return out


def _render(state: conf.ConfState, node: dict[str, conf.ParamValue] | None = None,
            cluster: dict[str, conf.ParamValue] | None = None) -> str:
    return conf.render_postgresql_conf(
        data_dir=Path("/d/data"), listen_address="10.0.0.1", port=5433, member="Node-1",
        node_parameters=node or {}, cluster_parameters=cluster or {}, state=state,
        replication_user="repl", passfile=Path("/d/data.pgpass"), socket_dir=Path("/d/data.run"),
        cluster_name="c1",
    )


def test_slot_name() -> None:
    assert conf.slot_name("Node-1.a") == "node_1_a"
    assert conf.slot_name("x" * 80) == "x" * 63
    assert conf.slot_name(conf.slot_name("Ab-c")) == conf.slot_name("Ab-c")


def test_sync_standby_names() -> None:
    assert conf.sync_standby_names(NO_SYNC) == ""
    assert conf.sync_standby_names(SyncConfig(1, frozenset({"b", "a"}))) == 'ANY 1 ("a", "b")'
    assert conf.sync_standby_names(SyncConfig(2, frozenset({'we"ird'}))) == 'ANY 2 ("we""ird")'
    assert conf.sync_standby_names(SyncConfig(1, frozenset({"*"}))) == "*"


def test_quote_value() -> None:
    assert conf.quote_value(True) == "on"
    assert conf.quote_value(10) == "10"
    assert conf.quote_value("it's") == "'it''s'"


def test_primary_conf_precedence_and_controlled() -> None:
    state = conf.ConfState("primary", None, SyncConfig(1, frozenset({"n2"})), "7")
    text = _render(state, node={"max_connections": 50, "work_mem": "4MB", "port": 1},
                   cluster={"max_connections": 70})
    p = _params(text)
    assert p["max_connections"] == "70"  # cluster over node over defaults
    assert p["work_mem"] == "'4MB'"
    assert p["port"] == "5433"  # controlled: user value ignored
    assert p["wal_level"] == "'replica'"
    assert p["hba_file"] == "'/d/data/pg_hba.conf'"
    assert p["unix_socket_directories"] == "'/d/data.run'"
    assert p["synchronous_standby_names"] == "'ANY 1 (\"n2\")'"
    assert "primary_conninfo" not in p
    assert conf.read_state(text) == state
    assert conf.ignored_parameters({"port": 1, "work_mem": 2}) == {"port"}


def test_replica_conf() -> None:
    state = conf.ConfState("replica", conf.Upstream("n0", "10.0.0.2", 5432), NO_SYNC, "1")
    p = _params(_render(state))
    ci = p["primary_conninfo"]
    for part in ("host=10.0.0.2", "port=5432", "user=repl", "passfile=/d/data.pgpass",
                 "application_name=Node-1", "connect_timeout=2", "keepalives=1",
                 "keepalives_idle=2", "keepalives_interval=1", "keepalives_count=3"):
        assert part in ci
    assert "target_session_attrs" not in ci
    assert p["primary_slot_name"] == "'node_1'"
    assert p["recovery_target_timeline"] == "'latest'"
    assert p["synchronous_standby_names"] == "''"


def test_replica_without_upstream_clears_conninfo() -> None:
    p = _params(_render(conf.ConfState("replica", None, NO_SYNC, "1")))
    assert p["primary_conninfo"] == "''"


def test_conninfo_quoting() -> None:
    ci = conf.primary_conninfo(conf.Upstream("a", "h", 1), user="u", application_name="x",
                               password="p w'\\")
    assert "password='p w\\'\\\\'" in ci


def test_hba_and_ident() -> None:
    hba = conf.render_pg_hba(superuser="postgres", extra=["host all app 10.0.0.0/8 scram-sha-256"])
    lines = [line.split() for line in hba.splitlines() if not line.startswith("#")]
    assert lines[0] == ["local", "all", "postgres", "peer", "map=pgwarden"]
    # The agent reads a standby's replay timeline over a local replication connection.
    assert lines[1] == ["local", "replication", "postgres", "peer", "map=pgwarden"]
    assert lines[2][2] == "app"  # extras before our catch-alls
    assert ["host", "replication", "all", "0.0.0.0/0", "scram-sha-256"] in lines
    assert all(line[-1] == "scram-sha-256" for line in lines if line[0] == "host")
    ident = conf.render_pg_ident(os_users=["root", "postgres"], superuser="postgres")
    assert "pgwarden   root            postgres" in ident


def test_passfile_escaping() -> None:
    assert conf.render_passfile([("u", "a:b\\c")]) == "*:*:*:u:a\\:b\\\\c\n"


def test_parse_history() -> None:
    text = "1\t0/3000060\tno recovery target specified\n\n2\t0/5000000\tat restore point \"x\"\n"
    assert parse_history(text) == [
        (1, 0x3000060, "no recovery target specified"),
        (2, 0x5000000, 'at restore point "x"'),
    ]


def _render_dsn(upstream: conf.Upstream, major: int | None) -> dict[str, str]:
    text = conf.render_postgresql_conf(
        data_dir=Path("/d/data"), listen_address="10.0.0.1", port=5433, member="node1",
        node_parameters={}, cluster_parameters={}, state=conf.ConfState("replica", upstream, NO_SYNC, "1"),
        replication_user="repl", passfile=Path("/d/data.pgpass"), socket_dir=None, cluster_name="B",
        major=major,
    )
    return _params(text)


def test_a_standby_site_streams_from_its_source_dsn() -> None:
    src = conf.Upstream("source-site-1", "", 0, "host=a1,a2 port=5432,5433 target_session_attrs=read-write",
                        "site_b")
    p = _render_dsn(src, 18)
    info = p["primary_conninfo"][1:-1].replace("''", "'")  # postgresql.conf quoting undone
    for part in ("host='a1,a2'", "port='5432,5433'", "target_session_attrs=read-write", "user=repl",
                 "passfile=/d/data.pgpass", "require_auth=scram-sha-256"):
        assert part in info, info
    # A name none of the source site's members has: never counted as one of its sync standbys.
    assert "application_name=B.node1" in info
    assert p["primary_slot_name"] == "'site_b'"
    # The state round-trips, so a restarted agent knows its DSN upstream.
    state = conf.ConfState("replica", src, NO_SYNC, "1")
    assert conf.ConfState.from_json(state.to_json()) == state


def test_source_dsn_hardening_follows_libpq_and_the_operator() -> None:
    src = conf.Upstream("s", "", 0, "host=a1 user=x require_auth=md5")
    assert "require_auth=md5" in _render_dsn(src, 18)["primary_conninfo"]
    assert "require_auth" not in _render_dsn(conf.Upstream("s", "", 0, "host=a1"), 15)["primary_conninfo"]
    no_slot = _render_dsn(conf.Upstream("s", "", 0, "host=a1"), 18)
    assert no_slot["primary_slot_name"] == "''"
    assert "user=x" in _render_dsn(src, 18)["primary_conninfo"]


def test_a_source_dsn_without_tls_settings_gets_this_nodes_and_keeps_its_own() -> None:
    ours = {"sslmode": "verify-full", "sslrootcert": "/etc/ca.crt"}
    bare = conf.primary_conninfo(conf.Upstream("s", "", 0, "host=a1,a2 port=1,2"), user="r",
                                 application_name="x", ssl=ours)
    assert "sslmode=verify-full" in bare and "sslrootcert=/etc/ca.crt" in bare
    own = conf.primary_conninfo(conf.Upstream("s", "", 0, "host=a1 sslmode=require"), user="r",
                                application_name="x", ssl=ours)
    assert "sslmode=require" in own and "sslrootcert" not in own and "verify-full" not in own
    plain = conf.primary_conninfo(conf.Upstream("s", "", 0, "host=a1"), user="r", application_name="x")
    assert "sslmode" not in plain
