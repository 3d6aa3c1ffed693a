"""Which logical slots this agent copied onto its standby, and on which timeline, kept across agent
restarts (`<data_dir>.pgwarden/slot_copies.json`): a copy is trusted only if we made it
(core/slot_copies.py), and forgetting would cost a drop, a copy and a standby restart each time the
agent restarts. Keyed by the PostgreSQL system identifier, so a new cluster's data never inherits
an old one's ledger."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger("pgwarden.agent")


class SlotLedger:
    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> tuple[str | None, dict[str, int]]:
        try:
            d = json.loads(self.path.read_text())
            return d.get("system_id"), {str(k): int(v) for k, v in (d.get("copies") or {}).items()}
        except FileNotFoundError:
            return None, {}
        except (OSError, ValueError, TypeError, AttributeError) as e:
            log.warning("ignoring unreadable %s: %s", self.path, e)
            return None, {}

    def save(self, system_id: str | None, copies: dict[str, int]) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps({"system_id": system_id, "copies": copies}, sort_keys=True))
            os.replace(tmp, self.path)
        except OSError as e:  # costs a re-copy after a restart, nothing more
            log.warning("cannot record slot copies in %s: %s", self.path, e)
