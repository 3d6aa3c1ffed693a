"""`pgwarden upgrade --from OLD.yaml --to NEW.yaml` on real servers: a PostgreSQL 15 cluster behind
PgBouncer and a separately brought-up cluster on the embedded 18 (as an operator would run it:
the old one's superuser and pgbouncer: section in its node files, its own replication password,
PgBouncer's owner line naming the old cluster before its agents start). Refused --checks (a user
table on the new cluster, an unreachable old node file) changing nothing, the upgrade under a
steady writer through PgBouncer, --rollback, upgrading again (killed inside the cutover and rerun)
and --finish. One pair of clusters
for the module, in test order."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from pgwarden.config.load import load_node_config
from pgwarden.local.cluster import LocalCluster, Options
from pgwarden.routing.pgbouncer import ini_owner, set_owner
from pgwarden.upgrade.newcluster import pgbouncer_section
from tests.support.cluster import Cluster, pgwarden, reachable_tmpdir
from tests.support.ports import free_port
from tests.support.wait import wait_for
from tests.upgrade.writer import TABLE, IdentityWriter, one, run

PG15 = "/usr/lib/postgresql/15/bin"

pytestmark = pytest.mark.skipif(not Path(PG15, "postgres").exists(), reason="needs Debian's PostgreSQL 15")


class Pair:
    """The old cluster (`pgwarden local up` on 15 with PgBouncer) and the new one on 18."""

    def __init__(self) -> None:
        self.old = Cluster("upgfrom", nodes=2, bin_dir=PG15, pgbouncer=True,
                           sets=("parameters.wal_level=logical",))
        self.new_dir = reachable_tmpdir("upgfrom-new")
        self.from_file = Path(self.old.config_path("node1"))
        self.to_file = self.new_dir / "node1" / "pgwarden.yaml"
        self.ini = self.old.dir / "pgbouncer" / "pgbouncer.ini"

    def bring_up_new(self) -> None:
        cfg = load_node_config(self.from_file)
        section = pgbouncer_section(cfg)
        # What the operator does first: PgBouncer stays with the old cluster's leader.
        set_owner(self.ini, cfg.cluster)

        def amend(doc: dict[str, Any]) -> None:
            doc["pgbouncer"] = dict(section)

        new = LocalCluster(self.new_dir)
        try:
            new.up(Options(nodes=1, assignments=("parameters.wal_level=logical",), timeout=180,
                           passwords=(cfg.postgresql.superuser.secret(), "a-new-replication-secret-42"),
                           amend_node=amend))
        finally:
            new.close()

    def upgrade(self, *args: str, check: bool = True,
                from_file: Path | None = None) -> subprocess.CompletedProcess[str]:
        return pgwarden("upgrade", "--from", str(from_file or self.from_file), "--to", str(self.to_file),
                        *args, check=check, timeout=600)

    def state_file(self) -> Path:
        return self.from_file.parent / f"upgrade-{self.old.dir.name}.json"

    def step(self) -> str | None:
        path = self.state_file()
        return str(json.loads(path.read_text())["step"]) if path.exists() else None

    def bouncer_dsn(self) -> str:
        res = pgwarden("local", "dsn", "--dir", str(self.old.dir), "--via", "pgbouncer")
        return res.stdout.splitlines()[-1]

    def old_dsn(self) -> str:
        return pgwarden("local", "dsn", "--dir", str(self.old.dir)).stdout.splitlines()[-1]

    def new_dsn(self) -> str:
        return pgwarden("local", "dsn", "--dir", str(self.new_dir)).stdout.splitlines()[-1]


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    p = Pair()
    with p.old:
        try:
            p.bring_up_new()
            yield p
        finally:
            pgwarden("local", "down", "--dir", str(p.new_dir), check=False, timeout=120)
            subprocess.run(["rm", "-rf", str(p.new_dir)], check=False)


@pytest.fixture(scope="module")
def w(pair: Pair) -> IdentityWriter:
    w = IdentityWriter(pair.bouncer_dsn())
    w.prepare()
    return w




def major_via_bouncer(pair: Pair) -> int:
    return int(str(one(pair.bouncer_dsn(), "SELECT version()")).split()[1].split(".")[0])


def wait_acks_on(w: IdentityWriter, major: int, more: int = 20) -> None:
    count = sum(1 for m in w.majors if m == major) + more
    wait_for(lambda: sum(1 for m in w.majors if m == major) >= count, 120,
             f"{count} acknowledged writes on PostgreSQL {major}")


def replication(dsn: str) -> tuple[object, ...]:
    """Publications, subscriptions and logical slots on one primary."""
    return (one(dsn, "SELECT count(*) FROM pg_publication"), one(dsn, "SELECT count(*) FROM pg_subscription"),
            one(dsn, "SELECT count(*) FROM pg_replication_slots WHERE slot_type = 'logical'"))


def test_check_refuses_a_non_empty_new_cluster_and_an_unreachable_node_file(
        pair: Pair, w: IdentityWriter) -> None:
    new = pair.new_dsn()
    run(new, "CREATE TABLE stray (id int PRIMARY KEY)")
    for args in (("--check",), ()):
        res = pair.upgrade(*args, check=False)
        assert res.returncode != 0, res.stdout
        assert "the new cluster is not empty: 1 user table(s) (public.stray)" in res.stderr
        assert "nothing was changed" in res.stderr
    # The old node file with its store moved to a port nobody listens on.
    doc = yaml.safe_load(pair.from_file.read_text())
    doc["store"]["etcd"]["hosts"] = [f"127.0.0.1:{free_port()}"]
    bad = pair.old.dir / "unreachable.yaml"
    bad.write_text(yaml.safe_dump(doc))
    res = pair.upgrade("--check", check=False, from_file=bad)
    assert res.returncode != 0 and "cannot read the store of" in res.stderr, res.stderr
    assert "nothing was changed" in res.stderr
    assert not pair.state_file().exists() and not (bad.parent / f"upgrade-{doc['cluster']}.json").exists()
    assert replication(pair.old_dsn()) == (0, 0, 0) and replication(new) == (0, 0, 0)
    assert ini_owner(pair.ini.read_text()) == pair.old.dir.name
    run(new, "DROP TABLE stray")
    assert "nothing in the way" in pair.upgrade("--check").stdout
    assert not pair.state_file().exists()


def test_upgrade_under_a_steady_writer(pair: Pair, w: IdentityWriter) -> None:
    new = pair.new_dsn()
    repl_password = one(new, "SELECT rolpassword FROM pg_authid WHERE rolname = 'replicator'")
    w.start()
    wait_acks_on(w, 15)
    res = pair.upgrade()
    assert "PgBouncer now sends clients to" in res.stdout, res.stdout
    assert pair.step() == "switched"
    wait_acks_on(w, 18)
    w.stop()
    assert w.errors == []
    assert major_via_bouncer(pair) == 18
    assert 15 in w.majors and w.majors[-1] == 18
    assert w.missing_on(new) == []
    assert one(new, f"SELECT max(id) FROM {TABLE}") == one(
        new, "SELECT last_value FROM pg_sequences WHERE sequencename LIKE 'upgrade_writes%'")
    assert len(set(w.acked)) == len(w.acked)
    # The new cluster's own replication user kept its password (the roles copy skips it).
    assert one(new, "SELECT rolpassword FROM pg_authid WHERE rolname = 'replicator'") == repl_password
    assert ini_owner(pair.ini.read_text()) == pair.new_dir.name
    assert "the upgrade is done" in pair.upgrade(check=False).stderr


def test_rollback_keeps_the_rows_written_after_the_cutover(pair: Pair, w: IdentityWriter) -> None:
    w.start()
    wait_acks_on(w, 18)
    res = pair.upgrade("--rollback")
    assert "every write kept" in res.stdout
    wait_acks_on(w, 15)
    w.stop()
    assert w.errors == []
    assert major_via_bouncer(pair) == 15
    assert w.missing_on(pair.old_dsn()) == []  # including every row acknowledged by 18
    assert pair.step() == "rolled_back"
    assert replication(pair.old_dsn()) == (0, 0, 0) and replication(pair.new_dsn()) == (0, 0, 0)
    assert ini_owner(pair.ini.read_text()) == pair.old.dir.name  # the new agents still run
    # The new cluster keeps its copy: upgrading again needs it emptied first.
    res = pair.upgrade("--check", check=False)
    assert res.returncode != 0 and "the new cluster is not empty" in res.stderr


def test_upgrade_again_killed_during_the_cutover_then_rerun_and_finish(pair: Pair, w: IdentityWriter) -> None:
    run(pair.new_dsn(), f"DROP TABLE {TABLE}")  # emptied, as the rollback told
    w.start()
    # A read-only transaction left open through PgBouncer holds the cutover's PAUSE, so the run
    # can be killed inside the cutover, after it took PgBouncer from both clusters' agents.
    blocker = psycopg.connect(pair.bouncer_dsn(), prepare_threshold=None)
    blocker.execute("SELECT 1")
    proc = subprocess.Popen([sys.executable, "-m", "pgwarden", "upgrade", "--from", str(pair.from_file),
                             "--to", str(pair.to_file)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: pair.step() == "cutting_over"
                 and ini_owner(pair.ini.read_text()) == "pgwarden-upgrade", 180, "the cutover to begin")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    blocker.commit()
    blocker.close()
    res = pair.upgrade()
    assert "recovered an interrupted cutover" in res.stdout, res.stdout
    assert pair.step() == "switched"
    res = pair.upgrade("--finish")
    assert f"the old cluster {pair.old.dir.name} still runs" in res.stdout
    wait_acks_on(w, 18)
    w.stop()
    assert w.errors == []
    assert pair.step() == "finished"
    assert w.missing_on(pair.new_dsn()) == []
    assert replication(pair.old_dsn()) == (0, 0, 0) and replication(pair.new_dsn()) == (0, 0, 0)
    assert one(pair.old_dsn(), "SELECT count(*) FROM pg_event_trigger") == 0  # DDL freeze released
    assert ini_owner(pair.ini.read_text()) == pair.new_dir.name
    assert major_via_bouncer(pair) == 18
    assert len(pair.old.primaries()) == 1  # left running for the operator to stop
