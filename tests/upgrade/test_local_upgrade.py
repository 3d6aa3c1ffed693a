"""`pgwarden local upgrade` on real servers: a PostgreSQL 15 cluster behind PgBouncer upgraded
online to the embedded 18 under a steady writer (psycopg, prepare_threshold=None), a refused
--check, a run killed half-way and rerun, --rollback, and --finish. One old cluster for the
whole module, in test order (each new cluster costs a start)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import yaml

from tests.support.cluster import Cluster, pgwarden
from tests.support.wait import wait_for
from tests.upgrade.writer import TABLE, IdentityWriter, one, run

PG15 = "/usr/lib/postgresql/15/bin"

pytestmark = pytest.mark.skipif(not Path(PG15, "postgres").exists(), reason="needs Debian's PostgreSQL 15")


class OldCluster(Cluster):
    def up(self) -> None:
        pgwarden("local", "up", "--nodes", str(self.nodes), "--dir", str(self.dir), "--bin-dir", PG15,
                 "--pgbouncer", "--set", "parameters.wal_level=logical")

    def down(self) -> None:
        new = self.dir / "pg18"
        if (new / "state.json").exists():
            pgwarden("local", "down", "--dir", str(new), check=False, timeout=120)
        super().down()

    def bouncer_dsn(self) -> str:
        return pgwarden("local", "dsn", "--dir", str(self.dir), "--via", "pgbouncer").stdout.splitlines()[-1]

    def direct_dsn(self, new: bool = False) -> str:
        d = self.dir / "pg18" if new else self.dir
        return pgwarden("local", "dsn", "--dir", str(d)).stdout.splitlines()[-1]

    def upgrade(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        # Creating the new cluster waits for its replicas: generous on a loaded machine.
        return pgwarden("local", "upgrade", "--dir", str(self.dir), *args, check=check, timeout=600)

    def step(self) -> str | None:
        path = self.dir / "upgrade.json"
        return str(json.loads(path.read_text())["step"]) if path.exists() else None


@pytest.fixture(scope="module")
def old() -> Iterator[OldCluster]:
    cl = OldCluster("upgrade", nodes=2)
    with cl:
        yield cl


@pytest.fixture(scope="module")
def w(old: OldCluster) -> IdentityWriter:
    w = IdentityWriter(old.bouncer_dsn())
    w.prepare()
    return w




def major_via_bouncer(old: OldCluster) -> int:
    text = str(one(old.bouncer_dsn(), "SELECT version()"))
    return int(text.split()[1].split(".")[0])


def wait_acks_on(w: IdentityWriter, major: int, count: int = 20) -> None:
    wait_for(lambda: sum(1 for m in w.majors if m == major) >= count, 120,
             f"{count} acknowledged writes on PostgreSQL {major}")


def test_check_refuses_a_table_without_a_primary_key_and_changes_nothing(old: OldCluster) -> None:
    dsn = old.bouncer_dsn()
    run(dsn, "CREATE TABLE no_key (a int)")
    before = sorted(p.name for p in old.dir.iterdir())
    for args in (("--check",), ()):
        res = old.upgrade(*args, check=False)
        assert res.returncode != 0, res.stdout
        assert "tables without a primary key or replica identity: public.no_key" in res.stderr
        assert "nothing was changed" in res.stderr
    assert sorted(p.name for p in old.dir.iterdir()) == before  # no upgrade.json, no new cluster
    assert one(dsn, "SELECT count(*) FROM pg_publication") == 0
    assert one(dsn, "SELECT count(*) FROM pg_replication_slots WHERE slot_type = 'logical'") == 0
    run(dsn, "DROP TABLE no_key")
    assert old.upgrade("--check").returncode == 0


def test_a_run_killed_half_way_is_cleaned_up_by_rollback(old: OldCluster) -> None:
    direct = old.direct_dsn()
    proc = subprocess.Popen([sys.executable, "-m", "pgwarden", "local", "upgrade", "--dir", str(old.dir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:  # killed once it publishes: wherever it got to after that, --rollback must undo it
        wait_for(lambda: one(direct, "SELECT count(*) FROM pg_publication") == 1, 180, "the publication")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    old.upgrade("--rollback")
    assert old.step() == "rolled_back" and not (old.dir / "pg18").exists()
    assert one(direct, "SELECT count(*) FROM pg_publication") == 0
    assert one(direct, "SELECT count(*) FROM pg_replication_slots WHERE slot_type = 'logical'") == 0
    assert one(direct, "SELECT count(*) FROM pg_event_trigger") == 0
    assert "pgwarden-owner" not in (old.dir / "pgbouncer" / "pgbouncer.ini").read_text()
    assert major_via_bouncer(old) == 15  # PgBouncer resumed, on the old cluster


def test_upgrade_under_a_steady_writer_killed_half_way_then_rerun(old: OldCluster, w: IdentityWriter) -> None:
    w.start()
    wait_acks_on(w, 15)
    # Killed while it creates the new cluster: the rerun removes the half-made one and carries on.
    proc = subprocess.Popen([sys.executable, "-m", "pgwarden", "local", "upgrade", "--dir", str(old.dir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: (old.dir / "pg18" / "state.json").exists(), 60, "the new cluster being created")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    assert old.step() == "started"
    res = old.upgrade()
    assert "left by an interrupted run" in res.stdout
    assert old.step() == "switched"
    wait_acks_on(w, 18)
    w.stop()
    assert w.errors == []
    assert major_via_bouncer(old) == 18
    assert 15 in w.majors and w.majors[-1] == 18
    new = old.direct_dsn(new=True)
    assert w.missing_on(new) == []
    # Sequences copied exactly (no margin): the identity sequence's last value is the last row.
    assert one(new, f"SELECT max(id) FROM {TABLE}") == one(
        new, "SELECT last_value FROM pg_sequences WHERE sequencename LIKE 'upgrade_writes%'")
    assert len(set(w.acked)) == len(w.acked)


def test_rollback_keeps_the_rows_written_after_the_cutover(old: OldCluster, w: IdentityWriter) -> None:
    w.start()
    wait_acks_on(w, 18, count=len([m for m in w.majors if m == 18]) + 20)
    res = old.upgrade("--rollback")
    assert "every write kept" in res.stdout
    wait_acks_on(w, 15, count=len([m for m in w.majors if m == 15]) + 20)
    w.stop()
    assert w.errors == []
    assert major_via_bouncer(old) == 15
    assert w.missing_on(old.direct_dsn()) == []  # including every row acknowledged by 18
    assert old.step() == "rolled_back" and not (old.dir / "pg18").exists()
    assert one(old.direct_dsn(), "SELECT count(*) FROM pg_replication_slots WHERE slot_type = 'logical'") == 0
    assert one(old.direct_dsn(), "SELECT count(*) FROM pg_publication") == 0


def kill_new_primary(old: OldCluster) -> str:
    """SIGKILL the new cluster's primary node (agent and postmaster); its name."""
    new_dir = old.dir / "pg18"
    status = json.loads(pgwarden("local", "status", "--dir", str(new_dir), "--format", "json").stdout)
    primary = next(m["name"] for m in status["members"] if m.get("role") == "primary")
    procs = json.loads((new_dir / "state.json").read_text())["procs"]
    doc = yaml.safe_load((new_dir / primary / "pgwarden.yaml").read_text())
    pids = [int(procs[primary]["pid"])]
    pidfile = Path(doc["data_dir"]) / "postmaster.pid"
    if pidfile.exists():
        pids.append(int(pidfile.read_text().splitlines()[0]))
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return str(primary)


def test_new_clusters_primary_killed_half_way_leaves_the_old_one_writing_and_a_rerun_carries_on(
        old: OldCluster, w: IdentityWriter) -> None:
    w.start()
    wait_acks_on(w, 15, count=len([m for m in w.majors if m == 15]) + 20)
    proc = subprocess.Popen([sys.executable, "-m", "pgwarden", "local", "upgrade", "--dir", str(old.dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:  # the new cluster runs; roles and schema are being copied into its primary
        wait_for(lambda: old.step() == "new_cluster", 240, "the new cluster to run", interval=0.01)
        # Held still while its new primary dies, so the kill lands before the cutover (which
        # would make it a failover of the new cluster with clients on it: another test's story).
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            assert old.step() in ("new_cluster", "schema", "replicating", "caught_up"), old.step()
            killed = kill_new_primary(old)
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    # The run waits out the new cluster's failover and carries on; had it stopped, clients would
    # still write on the old cluster and a rerun would carry on.
    assert w.errors == [], w.errors
    if old.step() != "switched":
        wait_acks_on(w, 15, count=len([m for m in w.majors if m == 15]) + 20)
        # A rerun carries on; right after the failover it may refuse to point PgBouncer at a
        # leader that does not accept writes yet ("rerun in a moment"), and change nothing.
        wait_for(lambda: old.upgrade(check=False).returncode == 0, 240, "a rerun that carries on", interval=1)
        assert old.step() == "switched"
    wait_acks_on(w, 18, count=len([m for m in w.majors if m == 18]) + 20)
    w.stop()
    assert w.errors == [], w.errors
    assert w.missing_on(old.direct_dsn(new=True)) == [], f"{killed} killed; first run said: {out}"
    old.upgrade("--rollback")  # as the next test expects: back on 15, the new cluster removed
    assert old.step() == "rolled_back"


def test_upgrade_again_killed_during_the_cutover_then_rerun_and_finish(
        old: OldCluster, w: IdentityWriter) -> None:
    w.start()
    # A transaction left open through PgBouncer holds the cutover's PAUSE, so the run can be
    # killed inside the cutover: after it took PgBouncer from both clusters' agents. Read-only
    # (no transaction id), so it does not hold up creating the slots before.
    blocker = psycopg.connect(old.bouncer_dsn(), prepare_threshold=None)
    blocker.execute("SELECT 1")
    proc = subprocess.Popen([sys.executable, "-m", "pgwarden", "local", "upgrade", "--dir", str(old.dir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ini = old.dir / "pgbouncer" / "pgbouncer.ini"
    try:
        wait_for(lambda: old.step() == "cutting_over"
                 and "pgwarden-owner: pgwarden-upgrade" in ini.read_text(), 180, "the cutover to begin")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    blocker.commit()
    blocker.close()
    # Killed with DDL frozen (only through the direct DSN: PgBouncer may still be paused).
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="DDL is frozen"):
        run(old.direct_dsn(), "CREATE TABLE during_cutover (id int PRIMARY KEY)")
    res = old.upgrade()
    assert "recovered an interrupted cutover" in res.stdout
    assert old.step() == "switched"
    run(old.bouncer_dsn(), "CREATE TABLE after_cutover (id int PRIMARY KEY)")  # DDL released
    res = old.upgrade("--finish")
    assert "retiring the old cluster" in res.stdout
    wait_acks_on(w, 18, count=len([m for m in w.majors if m == 18]) + 20)
    w.stop()
    assert w.errors == []
    assert old.step() == "finished"
    new_dir = old.dir / "pg18"
    dsn = pgwarden("local", "dsn", "--dir", str(new_dir), "--via", "pgbouncer").stdout.splitlines()[-1]
    assert str(one(dsn, "SELECT version()")).startswith("PostgreSQL 18")
    assert w.missing_on(old.direct_dsn(new=True)) == []
    status = json.loads(pgwarden("local", "status", "--dir", str(old.dir), "--format", "json").stdout)
    assert [m["state"] for m in status["members"]] == ["stopped", "stopped"], status
    assert "pgwarden-owner: pg18" in (old.dir / "pgbouncer" / "pgbouncer.ini").read_text()
    # PgBouncer kept running; it is now recorded with (and stopped by) the new cluster.
    assert "pgbouncer" not in json.loads((old.dir / "state.json").read_text())["procs"]
    assert "pgbouncer" in json.loads((new_dir / "state.json").read_text())["procs"]
