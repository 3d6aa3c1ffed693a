"""The upgrade's steps shared by both flavours: `pgwarden local upgrade` (which creates the new
cluster itself, run.py) and `pgwarden upgrade --from --to` (a new cluster the operator brought up,
nodefile.py). A flavour says how to reach each cluster (`ClusterRef`), what its checks are, and
what "new cluster", "remove the new cluster" and "retire the old one" mean for it; the rest is
here: roles and schema, replication and its progress, the cutover, recovery, rollback and finish.
The step reached is recorded after each action (state.py), so a rerun carries on."""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import psycopg
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pgwarden.core.model import ClusterView
from pgwarden.errors import CliError
from pgwarden.upgrade import checks, ddl_freeze, schema
from pgwarden.upgrade import replicate as R
from pgwarden.upgrade import state as S
from pgwarden.upgrade.cutover import Bouncer, Side, cutover, recover

SMALL_LAG = 1024 * 1024  # bytes: close enough to cut over
PRIMARY_WAIT = 60.0  # seconds a step waits for a cluster's primary (a failover takes a few)


@dataclass
class Request:
    mode: str  # upgrade | rollback | finish
    check_only: bool
    bin_dir: Path | None
    nodes: int | None
    timeout: float


class ClusterRef(Protocol):
    """One cluster as the upgrade reaches it."""

    @property
    def name(self) -> str: ...

    def dsn(self) -> str: ...  # multi-host, read-write, the superuser's credentials

    def primary(self, timeout: float) -> tuple[str, int]: ...  # the leader's host and port

    def is_up(self) -> bool: ...  # running (its primary may still be being chosen)


def wait_leader_address(
    read: Callable[[], ClusterView | None], timeout: float, missing: str
) -> tuple[str, int]:
    """The host and port of the member the store names leader, read every 0.2 s until `timeout`;
    past it, CliError(`missing`)."""
    deadline = time.monotonic() + timeout
    while True:
        view = read()
        if view is not None and view.leader is not None and view.leader.name in view.members:
            m = view.members[view.leader.name]
            return m.host, m.port
        if time.monotonic() > deadline:
            raise CliError(missing)
        time.sleep(0.2)


def make_side(name: str, dsn: str, primary: tuple[str, int]) -> Side:
    return Side(name, dsn, primary, lambda: psycopg.connect(dsn, autocommit=True))


class Flow:
    """The actions state.plan() names, run in order; a flavour subclasses it."""

    status_hint = "`pgwarden ctl list`"  # how the operator looks at both clusters

    def __init__(self, req: Request, state_dir: Path, state_file: str, old: ClusterRef,
                 bouncer: Bouncer | None) -> None:
        self.req = req
        self.state_dir = state_dir
        self.state_file = state_file
        self.old = old
        self.bouncer = bouncer
        self.console = Console(highlight=False, soft_wrap=True)
        self.state = S.load(state_dir, state_file)

    # -- what a flavour provides -------------------------------------------------------------------
    @property
    def new(self) -> ClusterRef:
        raise NotImplementedError

    def check(self) -> S.UpgradeState:
        """Step 1: refuse (CliError listing every problem) or return the state to start from."""
        raise NotImplementedError

    def do_new_cluster(self) -> None:
        raise NotImplementedError

    def remove_new(self) -> None:
        """Step 7 of --rollback, after the replication objects are gone."""
        raise NotImplementedError

    def retire_old(self) -> None:
        """Step 7 of --finish, after the replication objects are gone."""
        raise NotImplementedError

    def close(self) -> None:
        if self.bouncer is not None:
            self.bouncer.close()

    # -- helpers -----------------------------------------------------------------------------------
    def say(self, text: str) -> None:
        self.console.print(text)

    def step(self, n: int, text: str) -> None:
        self.console.print(f"[bold][{n}/7][/bold] {text}")

    def record(self, step: S.Step) -> None:
        assert self.state is not None
        self.state = S.advance(self.state, step)
        S.save(self.state_dir, self.state, self.state_file)

    def bouncer_or_fail(self) -> Bouncer:
        if self.bouncer is None:
            raise CliError("no PgBouncer configured in the old cluster's node file")
        return self.bouncer

    def open_primary(self, cluster: ClusterRef, timeout: float = PRIMARY_WAIT) -> psycopg.Connection[Any]:
        """A session on the cluster's primary. A cluster failing over has none for a few seconds:
        wait for one (bounded) rather than stop the upgrade half-way."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return psycopg.connect(cluster.dsn(), autocommit=True, connect_timeout=5)
            except psycopg.OperationalError as e:
                if time.monotonic() > deadline:
                    last = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
                    raise CliError(f"no primary of {cluster.name} answered within {timeout:g} s ({last}); "
                                   f"the step reached is kept: rerun to carry on, or --rollback") from None
            time.sleep(0.5)

    def side(self, cluster: ClusterRef, timeout: float = 60.0) -> Side:
        return make_side(cluster.name, cluster.dsn(), cluster.primary(timeout))

    def refuse(self, found: list[checks.Problem]) -> None:
        if found:
            raise CliError(checks.format_refusal(found))

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

    # -- actions (each idempotent) -----------------------------------------------------------------
    def do_check(self) -> None:
        self.state = self.check()
        S.save(self.state_dir, self.state, self.state_file)

    def do_schema(self) -> None:
        assert self.state is not None
        self.step(3, "copying roles and schema (pg_dump --schema-only of the new binaries)")
        dsn = self.new.dsn()
        with self.open_primary(self.new) as conn:
            done = schema.copy(Path(self.state.new_bin), self.old.dsn(), dsn, conn)
        self.say("      schema restored" if done else "      schema was restored already")
        self.record(S.Step.SCHEMA)

    def do_replicate(self) -> None:
        self.step(4, "publishing every table on the old cluster, subscribing from the new one")
        with self.open_primary(self.old) as old, \
                self.open_primary(self.new) as new:
            R.ensure_publication(old)
            R.ensure_subscription(new, old, R.FORWARD, self.old.dsn(), copy_data=True)
        self.record(S.Step.REPLICATING)

    def do_catch_up(self) -> None:
        deadline = time.monotonic() + self.req.timeout
        with self.open_primary(self.old) as old, \
                self.open_primary(self.new) as new, \
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
                           "`--rollback` cleans up the new one, then upgrade again")
        self.step(6, "changes on the new cluster now flow back to the old one (until --finish)")
        with self.open_primary(self.new) as new:
            row = new.execute("SHOW server_version").fetchone()
        self.say(f"      clients now reach PostgreSQL {row[0] if row else '?'} through PgBouncer; "
                 f"`--finish` retires the old cluster, `--rollback` goes back to it")

    def do_recover(self) -> None:
        bouncer = self.bouncer_or_fail()
        old = self.side(self.old)
        sides = {old.primary: old}
        if self.new.is_up():
            new = self.side(self.new)
            sides[new.primary] = new
        owner = recover(bouncer, sides, self.old.name, self.say)
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
                           f"old cluster; check {self.status_hint} of both before going on")

    def do_remove_new(self) -> None:
        assert self.state is not None
        if self.new.is_up() and self.bouncer is not None \
                and self.bouncer.target() == self.side(self.new).primary:
            raise CliError("PgBouncer still sends clients to the new cluster; not removing it "
                           "(rerun `--rollback` to cut back first)")
        self.remove_new()
        with self.open_primary(self.old) as old:
            ddl_freeze.release(old)
            R.drop_subscription(old, None, R.REVERSE)
            R.drop_slot_when_free(old, R.FORWARD)
            R.drop_publication(old)
        self.record(S.Step.ROLLED_BACK)
        self.say(f"      back on the old cluster {self.state.old_cluster}; every write kept")

    def do_finish(self) -> None:
        assert self.state is not None
        self.step(7, "finishing: dropping the reverse replication, retiring the old cluster")
        with self.open_primary(self.old) as old, \
                self.open_primary(self.new) as new:
            R.drop_subscription(old, new, R.REVERSE)
            R.drop_slot_when_free(old, R.FORWARD)  # left by a cutover killed right after RESUME
            R.drop_publication(old)
            R.drop_publication(new)
        self.retire_old()
        if self.bouncer is not None:
            # Stays named: were the old cluster's leader to act again (its node files still have
            # PgBouncer), it must not take PgBouncer back from the new one.
            self.bouncer.hand_to(self.state.new_cluster)
        self.record(S.Step.FINISHED)


@contextmanager
def upgrade_lock(directory: Path, what: str) -> Iterator[None]:
    # flock on the directory itself: a refused run leaves no file behind.
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CliError(f"another `{what}` is working on {directory}") from None
        yield
    finally:
        os.close(fd)


def run_flow(flow: Flow, lock_dir: Path, what: str) -> int:
    try:
        if flow.req.check_only:  # changes nothing, not even a lock file
            return flow.run()
        with upgrade_lock(lock_dir, what):
            return flow.run()
    except psycopg.Error as e:  # a server went away mid-step: say so in one line, keep the step
        last = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise CliError(f"{what} stopped: {last}; the step reached is kept in "
                       f"{flow.state_dir / flow.state_file}: rerun to carry on, or --rollback") from None
    finally:
        flow.close()
