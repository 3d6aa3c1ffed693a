"""The witness' YAML file (`pgwarden witness -c FILE`): its schema and loader. Here rather than
with the command so that `pgwarden local`, which writes witness files, can check them too."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import yaml
from msgspec import Meta, field

from pgwarden.config.errors import ConfigError
from pgwarden.config.load import yaml_problem
from pgwarden.config.schema import LogConfig, Name, StoreConfig, Strict
from pgwarden.config.validate import validate


class WitnessApiConfig(Strict, frozen=True, kw_only=True):
    listen_address: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=0, le=65535)]


class WitnessConfig(Strict, frozen=True, kw_only=True):
    """The witness' YAML file: the node file's `cluster`, `name`, `store` (raft) and `log`, plus
    an optional `restapi` serving GET /health. No `postgresql`: a witness has none."""

    cluster: Name
    name: Name
    store: StoreConfig
    restapi: WitnessApiConfig | None = None
    log: LogConfig = field(default_factory=LogConfig)

    def __post_init__(self) -> None:
        if self.store.raft is None:
            raise ValueError("a witness is a member of the agents' raft group: configure store.raft")
        if self.store.raft.data_dir is None:
            raise ValueError("store.raft.data_dir is required: a witness' term and vote must survive "
                             "a restart, or it can vote twice in one term")


def load_witness_config(path: str | Path) -> WitnessConfig:
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except OSError as e:
        raise ConfigError(f"cannot read config file {p}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {yaml_problem(e)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of keys at the top level")
    return validate(WitnessConfig, data, str(p))
