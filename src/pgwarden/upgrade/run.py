"""`pgwarden local upgrade`: runs the actions state.plan() chooses, recording the step reached in
DIR/upgrade.json after each one (docs/upgrade.md)."""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pgwarden.errors import CliError
from pgwarden.local.cluster import LocalCluster
from pgwarden.local.layout import cluster_name, load_state, save_state
from pgwarden.upgrade import checks, ddl_freeze, inspect, newcluster, schema
from pgwarden.upgrade import replicate as R
from pgwarden.upgrade import state as S
from pgwarden.upgrade.cutover import Bouncer, Side, cutover, recover

SMALL_LAG = 1024 * 1024  # bytes: close enough to cut over


@dataclass
class Request:
    mode: str  # upgrade | rollback | finish
    check_only: bool
    bin_dir: Path | None
    nodes: int | None
    timeout: float


class Upgrade:
    def __init__(self, old: LocalCluster, req: Request) -> None:
        self.old = old
        self.dir = old.directory
        self.req = req
        self.console = Console(highlight=False, soft_wrap=True)
        self.state = S.load(self.dir)
        self._new: LocalCluster | None = None
        cfg = newcluster.old_node_files(old)[0].pgbouncer
        self.bouncer = Bouncer(cfg) if cfg is not None else None

    # -- helpers -----------------------------------------------------------------------------------
    def say(self, text: str) -> None:
        self.console.print(text)

    def step(self, n: int, text: str) -> None:
        self.console.print(f"[bold][{n}/7][/bold] {text}")

    def record(self, step: S.Step) -> None:
        assert self.state is not None
        self.state = S.advance(self.state, step)
        S.save(self.dir, self.state)

    @property
    def new(self) -> LocalCluster:
        if self._new is None:
            assert self.state is not None
            self._new = LocalCluster(Path(self.state.new_dir), self.old.out)
        return self._new

    def bouncer_or_fail(self) -> Bouncer:
        if self.bouncer is None:
            raise CliError(f"no PgBouncer configured in {self.dir}'s node files")
        return self.bouncer

    @staticmethod
    def side(cluster: LocalCluster, timeout: float = 60.0) -> Side:
        deadline = time.monotonic() + timeout
        while True:
            view = cluster.view(0)
            if view is not None and view.leader is not None and view.leader.name in view.members:
                m = view.members[view.leader.name]
                return make_side(cluster.current_state().cluster, cluster.dsn(), (m.host, m.port))
            if time.monotonic() > deadline:
                raise CliError(f"no primary in {cluster.directory} within {timeout:g} s")
            time.sleep(0.2)

    # -- the run -----------------------------------------------------------------------------------
    def run(self) -> int:
        if self.req.check_only:
            self.check()
            return 0
        try:
            actions = S.plan(self.state, self.req.mode)
        except S.Refused as e:
            raise CliError(str(e)) from None
        if actions[:1] == ("recover",):
            # Where an interrupted cutover got to decides what is left: plan again after it.
            self.do_recover()
            if self.req.mode == "upgrade" and self.state is not None and self.state.step == S.Step.SWITCHED:
                self.say("      the interrupted cutover had switched already: the upgrade is done")
                return 0
            try:
                actions = tuple(a for a in S.plan(self.state, self.req.mode) if a != "recover")
            except S.Refused as e:
                raise CliError(str(e)) from None
        for action in actions:
            getattr(self, "do_" + action)()
        return 0

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
        nodes = self.req.nodes or len(self.old.current_state().agents())
        with psycopg.connect(self.old.dsn(), autocommit=True, connect_timeout=5) as conn:
            facts = inspect.gather(conn, bin_dir, major, self.bouncer is not None, self.dir, nodes)
        found = checks.problems(facts)
        if found:
            raise CliError(checks.format_refusal(found))
        new_dir = newcluster.new_dir_for(self.dir, major)
        self.say(f"      PostgreSQL {facts.old_major} -> {major}: nothing in the way "
                 f"({len(facts.extensions)} extension(s) besides plpgsql, all available on the new "
                 f"binaries)")
        return S.UpgradeState(S.Step.STARTED, self.old.current_state().cluster,
                              cluster_name(new_dir), str(new_dir), str(bin_dir), nodes)

    # -- actions (each idempotent) -----------------------------------------------------------------
    def do_check(self) -> None:
        self.state = self.check()
        self._new = None
        S.save(self.dir, self.state)

    def do_new_cluster(self) -> None:
        assert self.state is not None
        new_dir = Path(self.state.new_dir)
        self.step(2, f"a new cluster on {self.state.new_bin} in {new_dir}")
        # The new cluster's agents have PgBouncer configured: until the cutover hands it over,
        # only the old cluster's leader may drive it (without an owner line, both would).
        self.bouncer_or_fail().hand_to(self.state.old_cluster)
        if new_dir.exists():  # a killed run's, maybe half made; nothing is in it yet: start over
            self.say(f"      removing {new_dir}, left by an interrupted run")
            newcluster.remove(new_dir, self.old.out)
        self._new = newcluster.create(self.old, new_dir, Path(self.state.new_bin), self.state.nodes,
                                      self.req.timeout)
        self.side(self._new, self.req.timeout)  # its primary is up
        self.record(S.Step.NEW_CLUSTER)

    def do_schema(self) -> None:
        assert self.state is not None
        self.step(3, "copying roles and schema (pg_dump --schema-only of the new binaries)")
        dsn = self.new.dsn()
        with psycopg.connect(dsn, autocommit=True) as conn:
            done = schema.copy(Path(self.state.new_bin), self.old.dsn(), dsn, conn)
        self.say("      schema restored" if done else "      schema was restored already")
        self.record(S.Step.SCHEMA)

    def do_replicate(self) -> None:
        self.step(4, "publishing every table on the old cluster, subscribing from the new one")
        with psycopg.connect(self.old.dsn(), autocommit=True) as old, \
                psycopg.connect(self.new.dsn(), autocommit=True) as new:
            R.ensure_publication(old)
            R.ensure_subscription(new, old, R.FORWARD, self.old.dsn(), copy_data=True)
        self.record(S.Step.REPLICATING)

    def do_catch_up(self) -> None:
        deadline = time.monotonic() + self.req.timeout
        with psycopg.connect(self.old.dsn(), autocommit=True) as old, \
                psycopg.connect(self.new.dsn(), autocommit=True) as new, \
                Progress(TextColumn("      {task.description}"), BarColumn(), MofNCompleteColumn(),
                         TimeElapsedColumn(), console=self.console) as bar:
            states = R.table_states(new, R.FORWARD)
            task = bar.add_task("initial copy (tables ready)", total=len(states))
            while True:
                states = R.table_states(new, R.FORWARD)
                ready = sum(1 for s in states.values() if s == "r")
                copying = sorted(t for t, s in states.items() if s in ("d", "f"))
                bar.update(task, total=len(states), completed=ready,
                           description=f"initial copy{' of ' + ', '.join(copying[:3]) if copying else ''}")
                lag = R.lag_bytes(old, R.FORWARD)
                if ready == len(states) and lag is not None and lag < SMALL_LAG:
                    break
                if time.monotonic() > deadline:
                    raise CliError(f"the new cluster did not catch up within {self.req.timeout:g} s "
                                   f"({ready}/{len(states)} tables ready, lag {lag} bytes); rerun "
                                   f"to keep waiting, or --rollback to give up")
                time.sleep(0.2)
        self.say(f"      {len(states)} table(s) copied; lag {lag} bytes")
        self.record(S.Step.CAUGHT_UP)

    def do_cutover(self) -> None:
        self.step(5, "cutover: PgBouncer PAUSE, wait for the new primary, sequences, switch, RESUME")
        bouncer = self.bouncer_or_fail()
        self.record(S.Step.CUTTING_OVER)
        src, dst = self.side(self.old), self.side(self.new)
        with dst.connect() as new:
            forward = R.has_subscription(new, R.FORWARD)
        if not forward:  # a killed run got past dropping it: did it switch too?
            self.record(S.Step.SWITCHED if bouncer.target() == dst.primary else S.Step.BROKEN)
        else:
            try:
                cutover(bouncer, src, dst, R.FORWARD, R.REVERSE, self.say)
            except BaseException:
                with dst.connect() as new:
                    if not R.has_subscription(new, R.FORWARD):
                        self.record(S.Step.BROKEN)
                        raise
                self.record(S.Step.CAUGHT_UP)
                raise
            self.record(S.Step.SWITCHED)
        if self.state is not None and self.state.step == S.Step.BROKEN:
            raise CliError("the cutover failed half-way; clients stay on the old cluster. "
                           "`--rollback` removes the new one, then upgrade again")
        self.step(6, "changes on the new cluster now flow back to the old one (until --finish)")
        with psycopg.connect(self.new.dsn(), autocommit=True) as new:
            row = new.execute("SHOW server_version").fetchone()
        self.say(f"      clients now reach PostgreSQL {row[0] if row else '?'} through PgBouncer; "
                 f"`--finish` retires the old cluster, `--rollback` goes back to it")

    def do_recover(self) -> None:
        bouncer = self.bouncer_or_fail()
        old = self.side(self.old)
        sides = {old.primary: old}
        if self.new.state is not None and self.new.running():
            new = self.side(self.new)
            sides[new.primary] = new
        owner = recover(bouncer, sides, self.old.current_state().cluster, self.say)
        assert self.state is not None
        if owner == self.state.new_cluster:  # it had switched (the reverse replication exists)
            self.record(S.Step.SWITCHED)
        elif self.state.step == S.Step.CUTTING_OVER:
            self.record(S.Step.CAUGHT_UP)

    def do_cutback(self) -> None:
        self.step(5, "rollback: the same cutover from the new cluster back to the old one")
        bouncer = self.bouncer_or_fail()
        self.record(S.Step.CUTTING_BACK)
        src, dst = self.side(self.new), self.side(self.old)
        with dst.connect() as old:
            reverse = R.has_subscription(old, R.REVERSE)
        if reverse:
            cutover(bouncer, src, dst, R.REVERSE, None, self.say)
        elif bouncer.target() != dst.primary:
            raise CliError("the reverse replication is gone but PgBouncer does not point at the "
                           "old cluster; check `pgwarden local status` of both before going on")

    def do_remove_new(self) -> None:
        assert self.state is not None
        self.step(7, f"removing the new cluster in {self.state.new_dir}")
        new_dir = Path(self.state.new_dir)
        if self.new.state is not None and self.new.running() and self.bouncer is not None \
                and self.bouncer.target() == self.side(self.new).primary:
            raise CliError("PgBouncer still sends clients to the new cluster; not removing it "
                           "(rerun `--rollback` to cut back first)")
        newcluster.remove(new_dir, self.old.out)
        with psycopg.connect(self.old.dsn(), autocommit=True) as old:
            ddl_freeze.release(old)
            R.drop_subscription(old, None, R.REVERSE)
            R.drop_slot_when_free(old, R.FORWARD)
            R.drop_publication(old)
        if self.bouncer is not None:
            self.bouncer.hand_to(None)  # only the old cluster's agents are left to drive it
        self.record(S.Step.ROLLED_BACK)
        self.say(f"      back on the old cluster in {self.dir}; every write kept")

    def do_finish(self) -> None:
        assert self.state is not None
        self.step(7, "finishing: dropping the reverse replication, retiring the old cluster")
        with psycopg.connect(self.old.dsn(), autocommit=True) as old, \
                psycopg.connect(self.new.dsn(), autocommit=True) as new:
            R.drop_subscription(old, new, R.REVERSE)
            R.drop_slot_when_free(old, R.FORWARD)  # left by a cutover killed right after RESUME
            R.drop_publication(old)
            R.drop_publication(new)
        move_pgbouncer(self.dir, Path(self.state.new_dir))
        LocalCluster(self.dir, self.old.out).down()
        if self.bouncer is not None:
            # Stays named: were the retired cluster started again (its node files still have
            # PgBouncer), its leader must not take PgBouncer back from the new one.
            self.bouncer.hand_to(self.state.new_cluster)
        self.record(S.Step.FINISHED)
        self.say(f"      the old cluster is stopped (its data kept in {self.dir}); the cluster now "
                 f"lives in {self.state.new_dir}: use --dir {self.state.new_dir} from now on")


def make_side(name: str, dsn: str, primary: tuple[str, int]) -> Side:
    return Side(name, dsn, primary, lambda: psycopg.connect(dsn, autocommit=True))


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


@contextmanager
def upgrade_lock(directory: Path) -> Iterator[None]:
    # flock on the directory itself: a refused run leaves no file behind.
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CliError(f"another `pgwarden local upgrade` is working on {directory}") from None
        yield
    finally:
        os.close(fd)


def main(old: LocalCluster, req: Request) -> int:
    old.current_state()  # refuses a directory without a cluster
    if req.check_only:  # changes nothing, not even a lock file
        return Upgrade(old, req).run()
    with upgrade_lock(old.directory):
        up = Upgrade(old, req)
        try:
            return up.run()
        finally:
            if up.bouncer is not None:
                up.bouncer.close()
            if up._new is not None:
                up._new.close()
