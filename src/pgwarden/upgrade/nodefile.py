"""`pgwarden upgrade --from OLD.yaml --to NEW.yaml`: the shared flow (flow.py) for clusters the
operator runs. Each cluster is reached through its node file's store (leader, members) with its
superuser; the new cluster is one the operator brought up, empty, on the newer major, its node
files naming the old one's PgBouncer. The step is kept in upgrade-CLUSTER.json beside the old node
file. Run it where PgBouncer runs: the cutover rewrites its pgbouncer.ini (docs/upgrade.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg

from pgwarden.config.load import load_node_config
from pgwarden.config.schema import NodeConfig, PgBouncerConfig
from pgwarden.core.model import ClusterView
from pgwarden.errors import CliError
from pgwarden.report import libpq_dsn, ssl_options
from pgwarden.routing.pgbouncer import AdminError
from pgwarden.store.base import StoreError
from pgwarden.upgrade import checks, ddl_freeze, inspect
from pgwarden.upgrade import replicate as R
from pgwarden.upgrade import state as S
from pgwarden.upgrade.cutover import UPGRADE_OWNER, Bouncer
from pgwarden.upgrade.flow import Flow, Request, run_flow, wait_leader_address

STORE_TIMEOUT = 3.0


class Unreachable(Exception):
    """A cluster's store or primary does not answer (the message says which)."""


class NodeFileRef:
    """A cluster reached from one of its node files: members and leader from its store."""

    def __init__(self, cfg: NodeConfig, path: Path) -> None:
        self.cfg = cfg
        self.path = path
        self._store: Any = None

    @property
    def name(self) -> str:
        return self.cfg.cluster

    def view(self) -> ClusterView:
        from pgwarden.store.factory import open_tool_store

        try:
            if self._store is None:
                self._store = open_tool_store(self.cfg.store, self.cfg.cluster)
            view: ClusterView = self._store.snapshot(STORE_TIMEOUT)
            return view
        except (StoreError, OSError) as e:
            raise Unreachable(f"cannot read the store of {self.name} ({self.path}): {e}") from None

    def dsn(self) -> str:
        view = self.view()
        hosts = [(m.host, m.port) for _, m in sorted(view.members.items())] or \
            [self.cfg.postgresql.connect_host_port()]
        su = self.cfg.postgresql.superuser
        return libpq_dsn(hosts, su.username, su.secret(), ssl=ssl_options(self.cfg.postgresql.tls))

    def primary(self, timeout: float) -> tuple[str, int]:
        return wait_leader_address(self.view, timeout, f"{self.name} has no leader within {timeout:g} s "
                                                       f"({self.path})")

    def is_up(self) -> bool:
        try:
            self.primary(0)
            return True
        except (Unreachable, CliError):
            return False

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


def same_pgbouncer(a: PgBouncerConfig | None, b: PgBouncerConfig | None) -> str:
    if b is None:
        return "none"
    if a is None or (a.host, a.port, Path(a.config_file).resolve()) != \
            (b.host, b.port, Path(b.config_file).resolve()):
        return "other"
    return "same"


class NodeFileUpgrade(Flow):
    def __init__(self, from_file: Path, to_file: Path, req: Request) -> None:
        self.from_file, self.to_file = from_file.resolve(), to_file.resolve()
        old_cfg, new_cfg = load_node_config(self.from_file), load_node_config(self.to_file)
        pb = old_cfg.pgbouncer
        self.old_ref = NodeFileRef(old_cfg, self.from_file)
        super().__init__(req, self.from_file.parent, f"upgrade-{old_cfg.cluster}.json", self.old_ref,
                         Bouncer(pb) if pb is not None else None)
        self.new_ref = NodeFileRef(new_cfg, self.to_file)
        if self.state is not None and self.state.new_dir != str(self.to_file) \
                and self.state.step not in (S.Step.ROLLED_BACK, S.Step.FINISHED):
            raise CliError(f"an upgrade of {old_cfg.cluster} to {self.state.new_dir} is under way "
                           f"(step {self.state.step.value}, {self.state_dir / self.state_file}): "
                           f"pass that file as --to, or `--rollback` it first")

    @property
    def new(self) -> NodeFileRef:
        return self.new_ref

    def close(self) -> None:
        super().close()
        self.old_ref.close()
        self.new_ref.close()

    # -- step 1 ------------------------------------------------------------------------------------
    def dump_bin(self) -> tuple[Path | None, int | None]:
        from pgwarden.postgres.binaries import BinariesError, find_bin_dir, pg_version

        try:
            bin_dir = find_bin_dir(self.new_ref.cfg.postgresql.bin_dir)
            return bin_dir, pg_version(bin_dir)
        except BinariesError:
            return None, None

    def connect(self, ref: NodeFileRef) -> psycopg.Connection[Any]:
        ref.primary(5.0)
        try:
            return psycopg.connect(ref.dsn(), autocommit=True, connect_timeout=5)
        except psycopg.Error as e:
            raise Unreachable(f"cannot connect to the primary of {ref.name} ({ref.path}): "
                              f"{str(e).strip().splitlines()[-1]}") from None

    def check(self) -> S.UpgradeState:
        self.step(1, f"checking {self.old.name} ({self.from_file}) and {self.new.name} ({self.to_file})")
        reach_fix = "start its store and members, or fix the node file"
        unreachable: list[checks.Problem] = []
        facts: checks.Facts | None = None
        new_facts: tuple[int, str, frozenset[str], tuple[str, ...]] | None = None
        try:
            with self.connect(self.old_ref) as old:
                facts = inspect.gather(old, frozenset(), 0, self.bouncer is not None, None, 1,
                                       str(self.from_file))
        except (Unreachable, CliError) as e:
            unreachable.append(checks.Problem(str(e), reach_fix))
        try:
            with self.connect(self.new_ref) as new:
                row = new.execute("SELECT current_setting('server_version_num')::int, "
                                  "current_setting('wal_level')").fetchone()
                assert row is not None
                new_facts = (int(row[0]) // 10000, str(row[1]), inspect.server_extensions(new),
                             inspect.user_tables(new))
        except (Unreachable, CliError) as e:
            unreachable.append(checks.Problem(str(e), reach_fix))
        if facts is None or new_facts is None:
            raise CliError(checks.format_refusal(unreachable))
        new_major, wal_level, available, tables = new_facts
        found = checks.problems(facts)
        missing = [e for e in facts.extensions if e not in available]
        if missing:
            found.append(checks.Problem(f"extensions missing on the new cluster: {', '.join(missing)}",
                                        "install them for the new major version where it runs"))
        dump_dir, dump_major = self.dump_bin()
        su_old, su_new = self.old_ref.cfg.postgresql.superuser, self.new_ref.cfg.postgresql.superuser
        bouncer = self.bouncer
        target = checks.Target(
            old_cluster=self.old.name, new_cluster=self.new.name, to_file=str(self.to_file),
            old_major=facts.old_major, new_major=new_major, user_tables=tables, wal_level=wal_level,
            same_superuser=(su_old.username, su_old.secret()) == (su_new.username, su_new.secret()),
            pgbouncer=same_pgbouncer(self.old_ref.cfg.pgbouncer, self.new_ref.cfg.pgbouncer),
            owner=bouncer.owner() if bouncer is not None and bouncer.ini.exists() else None,
            dump_major=dump_major, dump_dir=str(dump_dir or ""))
        found += checks.target_problems(target)
        if bouncer is not None:
            found += self.bouncer_problems(bouncer)
        self.refuse(found)
        self.say(f"      PostgreSQL {facts.old_major} -> {new_major}: nothing in the way "
                 f"({len(facts.extensions)} extension(s) besides plpgsql, all available on "
                 f"{self.new.name})")
        assert dump_dir is not None
        members = len(self.new_ref.view().members)
        return S.UpgradeState(S.Step.STARTED, self.old.name, self.new.name, str(self.to_file),
                              str(dump_dir), members)

    def bouncer_problems(self, bouncer: Bouncer) -> list[checks.Problem]:
        if not bouncer.ini.exists():
            return [checks.Problem(f"PgBouncer's config file {bouncer.ini} is not on this host "
                                   f"(the cutover rewrites it)", "run `pgwarden upgrade` where "
                                   "PgBouncer runs")]
        try:
            target = bouncer.target()
        except (AdminError, OSError) as e:
            return [checks.Problem(f"PgBouncer's admin console does not answer: {e}",
                                   "start PgBouncer, or fix the pgbouncer: section of the old node file")]
        primary = self.old_ref.primary(5.0)
        if target != primary and (self.state is None or self.state.step == S.Step.ROLLED_BACK):
            where = f"{target[0]}:{target[1]}" if target else "nowhere"
            return [checks.Problem(f"PgBouncer sends clients to {where}, not to the old cluster's "
                                   f"primary {primary[0]}:{primary[1]}",
                                   "let the old cluster's leader drive PgBouncer (owner line) first")]
        return []

    # -- the flavour's steps ---------------------------------------------------------------------------
    def do_new_cluster(self) -> None:
        host, port = self.new.primary(self.req.timeout)
        self.step(2, f"the new cluster {self.new.name} ({self.to_file}): primary at {host}:{port}")
        # Until the cutover hands it over, only the old cluster's leader may drive PgBouncer.
        bouncer = self.bouncer_or_fail()
        if bouncer.owner() != UPGRADE_OWNER:
            bouncer.hand_to(self.old.name)
        self.record(S.Step.NEW_CLUSTER)

    def remove_new(self) -> None:
        self.step(7, f"dropping the replication on {self.new.name} (its copy of the data stays)")
        if self.new.is_up():
            with self.open_primary(self.old) as old, self.open_primary(self.new) as new:
                ddl_freeze.release(new)
                R.drop_subscription(new, old, R.FORWARD)
                R.drop_publication(new)
        else:
            self.say(f"      {self.new.name} does not answer: its subscription (if any) stays; "
                     f"drop it there with DROP SUBSCRIPTION {R.FORWARD}")
        if self.bouncer is not None:
            # The new cluster's agents still have PgBouncer configured: the old one keeps it.
            self.bouncer.hand_to(self.old.name)
        self.say(f"      to upgrade again, empty {self.new.name} (it has the copied tables) or "
                 f"bring up a fresh new cluster")

    def retire_old(self) -> None:
        self.say(f"      the old cluster {self.old.name} still runs; PgBouncer's owner line names "
                 f"{self.new.name}, so its leader leaves PgBouncer alone. Stop its agents when you "
                 f"no longer need it, and remove the pgbouncer: section from {self.from_file}")


def main(from_file: Path, to_file: Path, req: Request) -> int:
    for flag, f in (("--from", from_file), ("--to", to_file)):
        if not f.is_file():
            raise CliError(f"{flag} {f}: no such node file")
    flow = NodeFileUpgrade(from_file, to_file, req)
    return run_flow(flow, flow.state_dir, "pgwarden upgrade")
