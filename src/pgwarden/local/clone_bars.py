"""While `pgwarden local up` waits for its agents: a progress bar per member whose base backup
runs (the leader's pg_stat_progress_basebackup, postgres/backup_progress.py), on a terminal only;
elsewhere nothing is read or drawn."""

from __future__ import annotations

import time

from pgwarden.local.handle import ClusterHandle, node_file
from pgwarden.postgres.backup_progress import BackupPoller, Bars, view_row
from pgwarden.postgres.sql import ConnParams
from pgwarden.report import ssl_options

POLL_INTERVAL = 0.5


class CloneBars:
    def __init__(self, cluster: ClusterHandle) -> None:
        self.cluster = cluster
        self.bars = Bars()
        self._poller: BackupPoller | None = None
        self._polled = 0.0
        self._shown: set[str] = set()

    def __enter__(self) -> CloneBars:
        self.bars.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bars.__exit__(*exc)
        if self._poller is not None:
            self._poller.close()

    def tick(self, ready: set[str]) -> None:
        """Called from the readiness loop; `ready`: the members ready by now (their bars end)."""
        if not self.bars.live:
            return
        for name in self._shown & ready:
            self.bars.finish(name, f"{name}: streaming")
        self._shown -= ready
        now = time.monotonic()
        if now - self._polled < POLL_INTERVAL:
            return
        self._polled = now
        poller = self._leader_poller()
        if poller is None:
            return
        for name, backup in poller.poll().items():
            if name not in ready:
                self.bars.show(view_row(name, None, backup))
                self._shown.add(name)

    def _leader_poller(self) -> BackupPoller | None:
        view = self.cluster.view()
        leader = view.members.get(view.leader.name) if view is not None and view.leader else None
        if leader is None:
            return None
        where = (leader.host, leader.port)
        if self._poller is not None and (self._poller.params.host, self._poller.params.port) == where:
            return self._poller
        rec = self.cluster.current_state().procs.get(leader.name)
        cfg = node_file(rec) if rec is not None else None
        if cfg is None:
            return None
        su = cfg.postgresql.superuser
        try:
            password = su.secret()
        except ValueError:
            return None
        if self._poller is not None:
            self._poller.close()
        self._poller = BackupPoller(ConnParams(
            host=leader.host, port=leader.port, user=su.username, password=password,
            application_name="pgwarden-local", ssl=tuple(ssl_options(cfg.postgresql.tls).items())))
        return self._poller
