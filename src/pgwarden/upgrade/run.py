"""`pgwarden local upgrade`: the shared flow (flow.py) with a new cluster it creates itself in
DIR/pg<major> and its step recorded in DIR/upgrade.json (docs/upgrade.md)."""

from __future__ import annotations

import shutil
from pathlib import Path

import psycopg

from pgwarden.errors import CliError
from pgwarden.local.cluster import LocalCluster
from pgwarden.local.layout import cluster_name, load_state, save_state
from pgwarden.upgrade import checks, inspect, newcluster
from pgwarden.upgrade import state as S
from pgwarden.upgrade.cutover import Bouncer
from pgwarden.upgrade.flow import Flow, Request, run_flow, wait_leader_address

__all__ = ["LocalRef", "LocalUpgrade", "Request", "main", "move_pgbouncer"]


class LocalRef:
    """A `local` cluster: its node files, store and processes are under its directory."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster

    @property
    def name(self) -> str:
        return self.cluster.current_state().cluster

    def dsn(self) -> str:
        return self.cluster.dsn()

    def primary(self, timeout: float) -> tuple[str, int]:
        return wait_leader_address(lambda: self.cluster.view(0), timeout,
                                   f"no primary in {self.cluster.directory} within {timeout:g} s")

    def is_up(self) -> bool:
        return self.cluster.state is not None and bool(self.cluster.running())


class LocalUpgrade(Flow):
    status_hint = "`pgwarden local status`"

    def __init__(self, old: LocalCluster, req: Request) -> None:
        cfg = newcluster.old_node_files(old)[0].pgbouncer
        super().__init__(req, old.directory, S.STATE_FILE, LocalRef(old),
                         Bouncer(cfg) if cfg is not None else None)
        self.old_cluster = old
        self.dir = old.directory
        self._new: LocalCluster | None = None

    @property
    def new_cluster(self) -> LocalCluster:
        if self._new is None:
            assert self.state is not None
            self._new = LocalCluster(Path(self.state.new_dir), self.old_cluster.out)
        return self._new

    @property
    def new(self) -> LocalRef:
        return LocalRef(self.new_cluster)

    def close(self) -> None:
        super().close()
        if self._new is not None:
            self._new.close()

    def new_bin(self) -> tuple[Path, int]:
        from pgwarden.postgres.binaries import BinariesError, find_bin_dir, pg_version

        try:
            bin_dir = find_bin_dir(self.req.bin_dir.resolve() if self.req.bin_dir else None)
            return bin_dir, pg_version(bin_dir)
        except BinariesError as e:
            raise CliError(f"--bin-dir: {e}") from None

    def check(self) -> S.UpgradeState:
        self.step(1, "checking what logical replication can move")
        bin_dir, major = self.new_bin()
        nodes = self.req.nodes or len(self.old_cluster.current_state().agents())
        with psycopg.connect(self.old.dsn(), autocommit=True, connect_timeout=5) as conn:
            facts = inspect.gather(conn, inspect.available_extensions(bin_dir), major,
                                   self.bouncer is not None, shutil.disk_usage(self.dir).free, nodes)
        self.refuse(checks.problems(facts))
        new_dir = newcluster.new_dir_for(self.dir, major)
        self.say(f"      PostgreSQL {facts.old_major} -> {major}: nothing in the way "
                 f"({len(facts.extensions)} extension(s) besides plpgsql, all available on the new "
                 f"binaries)")
        self._new = None
        return S.UpgradeState(S.Step.STARTED, self.old.name, cluster_name(new_dir), str(new_dir),
                              str(bin_dir), nodes)

    def do_new_cluster(self) -> None:
        assert self.state is not None
        new_dir = Path(self.state.new_dir)
        self.step(2, f"a new cluster on {self.state.new_bin} in {new_dir}")
        # The new cluster's agents have PgBouncer configured: until the cutover hands it over,
        # only the old cluster's leader may drive it (without an owner line, both would).
        self.bouncer_or_fail().hand_to(self.state.old_cluster)
        if new_dir.exists():  # a killed run's, maybe half made; nothing is in it yet: start over
            self.say(f"      removing {new_dir}, left by an interrupted run")
            newcluster.remove(new_dir, self.old_cluster.out)
        self._new = newcluster.create(self.old_cluster, new_dir, Path(self.state.new_bin),
                                      self.state.nodes, self.req.timeout)
        self.new.primary(self.req.timeout)  # its primary is up
        self.record(S.Step.NEW_CLUSTER)

    def remove_new(self) -> None:
        assert self.state is not None
        self.step(7, f"removing the new cluster in {self.state.new_dir}")
        newcluster.remove(Path(self.state.new_dir), self.old_cluster.out)
        if self.bouncer is not None:
            self.bouncer.hand_to(None)  # only the old cluster's agents are left to drive it

    def retire_old(self) -> None:
        assert self.state is not None
        move_pgbouncer(self.dir, Path(self.state.new_dir))
        LocalCluster(self.dir, self.old_cluster.out).down()
        self.say(f"      the old cluster is stopped (its data kept in {self.dir}); the cluster now "
                 f"lives in {self.state.new_dir}: use --dir {self.state.new_dir} from now on")


def move_pgbouncer(old_dir: Path, new_dir: Path) -> None:
    """PgBouncer keeps running; its record moves to the new cluster's state, so stopping the old
    cluster leaves it alone and `local down/dsn --dir NEW` find it."""
    old_state, new_state = load_state(old_dir), load_state(new_dir)
    if old_state is None or new_state is None:
        raise CliError(f"no local cluster state in {old_dir if old_state is None else new_dir}")
    rec = old_state.procs.pop("pgbouncer", None)
    if rec is not None:
        new_state.procs[rec.name] = rec
        save_state(new_dir, new_state)
        save_state(old_dir, old_state)


def main(old: LocalCluster, req: Request) -> int:
    old.current_state()  # refuses a directory without a cluster
    return run_flow(LocalUpgrade(old, req), old.directory, "pgwarden local upgrade")
