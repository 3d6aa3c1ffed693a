"""The base of what `pgwarden local up` runs in the background, the stages it starts them in, and
the hooks run after a process of a given kind has stopped."""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any

from pgwarden.local.handle import ClusterHandle
from pgwarden.local.layout import ProcRecord

STAGE_STORE = 0
STAGE_AGENTS = 1
STAGE_EXTRAS = 2


class Component(abc.ABC):
    """Something `local up` runs in the background. `plan` writes its files and says how to run
    it; `is_ready` is polled until true (the process having exited counts as failure).

    `cluster` is the LocalCluster running the component. The base types it Any so that this
    module needs no import of cluster.py, which imports the components; each component names the
    type it uses: ClusterHandle for the store, agents and witness, LocalCluster for extras."""

    name: str
    kind: str
    stage: int = STAGE_EXTRAS

    @abc.abstractmethod
    def plan(self, cluster: Any) -> ProcRecord: ...

    def is_ready(self, cluster: Any, record: ProcRecord) -> bool:
        return True

    def amend_node_config(self, doc: dict[str, Any]) -> None:  # noqa: B027 (optional hook)
        """Add to each new node's config (e.g. a pooler section the agents drive); default none."""


# What to do after a process of a given kind has stopped (agents: make sure PostgreSQL stopped).
AFTER_STOP: dict[str, Callable[[ClusterHandle, ProcRecord], None]] = {}
