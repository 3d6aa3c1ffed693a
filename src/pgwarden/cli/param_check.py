"""`ctl edit-config` checks the parameter values it is about to store against a running member's
pg_settings (core/parameters.py has the rules): this node's PostgreSQL first, then every member's,
with the node file's superuser. A value PostgreSQL would refuse is one line and exit 2, and nothing
is written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import psycopg

from pgwarden.config.schema import NodeConfig
from pgwarden.core.model import ClusterView
from pgwarden.core.parameters import SettingSpec, changed_parameters, parameter_errors
from pgwarden.core.settings import ClusterSettings
from pgwarden.errors import CliError, UsageError
from pgwarden.postgres import sql

CONNECT_TIMEOUT = 3.0


def _addresses(cfg: NodeConfig, view: ClusterView) -> list[tuple[str, int]]:
    own = cfg.postgresql.connect_host_port()
    seen = [own]
    for m in view.members.values():
        if m.host and m.port and (m.host, m.port) not in seen:
            seen.append((m.host, m.port))
    return seen


def fetch_specs(cfg: NodeConfig, addresses: Iterable[tuple[str, int]]) -> list[SettingSpec]:
    """pg_settings from the first of `addresses` that answers; CliError naming them all if none."""
    su = cfg.postgresql.superuser
    try:
        password = su.secret()
    except ValueError as e:
        raise CliError(f"postgresql.superuser: {e}") from None
    tried: list[str] = []
    for host, port in addresses:
        params = sql.ConnParams(host=host, port=port, user=su.username, password=password,
                                application_name="pgwarden-ctl")
        try:
            with sql.connect(params, CONNECT_TIMEOUT) as conn:
                return sql.setting_specs(conn)
        except (psycopg.Error, OSError) as e:
            why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            tried.append(f"{host}:{port} ({why})")
    raise CliError(f"cannot check the parameter values: no member's PostgreSQL answered "
                   f"({'; '.join(tried)}); start one and retry")


class ParameterCheck:
    """The check `update_settings` runs on each attempt; pg_settings is read once, when first
    needed (a change that adds or alters no parameter needs no server)."""

    def __init__(self, cfg: NodeConfig, snapshot: Callable[[], ClusterView]) -> None:
        self._cfg = cfg
        self._snapshot = snapshot
        self._specs: list[SettingSpec] | None = None

    def __call__(self, before: ClusterSettings, after: ClusterSettings) -> None:
        changed = changed_parameters(before.parameters, after.parameters)
        if not changed:
            return
        if self._specs is None:
            self._specs = fetch_specs(self._cfg, _addresses(self._cfg, self._snapshot()))
        if errors := parameter_errors(self._specs, changed):
            raise UsageError("; ".join(errors))
