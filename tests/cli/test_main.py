"""The console script's contract: one clear line on stderr and the right exit code for every
user mistake, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cli.helpers import run_cli, write_node_file
from tests.support.ports import free_port


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("pgwarden: error: "), err
    return lines[0]


def test_version() -> None:
    r = run_cli("version")
    assert r.code == 0
    assert r.out.startswith("pgwarden ")


def test_version_flag() -> None:
    r = subprocess.run([sys.executable, "-m", "pgwarden", "--version"], capture_output=True, text=True,
                       timeout=60, check=False)
    assert r.returncode == 0 and r.stdout.startswith("pgwarden ")


def test_a_closed_pipe_ends_quietly() -> None:
    """`pgwarden ... | head -1`: the reader has gone when we write; no error, no traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([sys.executable, "-m", "pgwarden", "version"], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=60, check=False)
    finally:
        os.close(write_end)
    assert proc.returncode == 141
    assert proc.stderr == ""


def test_unknown_subcommand() -> None:
    r = run_cli("frobnicate")
    assert r.code == 2
    line = one_error_line(r.err)
    assert "frobnicate" in line and "ctl" in line and "local" in line


def test_unknown_ctl_command() -> None:
    r = run_cli("ctl", "-c", "x.yaml", "lst")
    assert r.code == 2
    assert "lst" in one_error_line(r.err)


def test_ctl_needs_config() -> None:
    r = run_cli("ctl", "list")
    assert r.code == 2
    assert "-c/--config" in one_error_line(r.err)


def test_no_command() -> None:
    r = run_cli()
    assert r.code == 2
    one_error_line(r.err)


def test_missing_config_file(tmp_path: Path) -> None:
    r = run_cli("ctl", "-c", str(tmp_path / "nope.yaml"), "list")
    assert r.code == 2
    line = one_error_line(r.err)
    assert "cannot read config file" in line and "nope.yaml" in line


def test_config_typo_names_key_and_suggests(tmp_path: Path) -> None:
    path = write_node_file(tmp_path / "n.yaml", "c1", "127.0.0.1:2379", postgresql={"prot": 5433})
    r = run_cli("ctl", "-c", str(path), "list")
    assert r.code == 2
    line = one_error_line(r.err)
    assert "postgresql.prot" in line and "did you mean 'port'" in line


def test_agent_validates_config_first(tmp_path: Path) -> None:
    path = write_node_file(tmp_path / "n.yaml", "c1", "127.0.0.1:2379", tgas={})
    r = run_cli("agent", "-c", str(path))
    assert r.code == 2
    assert "did you mean 'tags'" in one_error_line(r.err)


def test_unreachable_store_is_one_line_and_quick(tmp_path: Path) -> None:
    endpoint = f"127.0.0.1:{free_port()}"  # nobody listens here
    path = write_node_file(tmp_path / "n.yaml", "c1", endpoint)
    started = time.monotonic()
    r = run_cli("ctl", "-c", str(path), "list")
    assert time.monotonic() - started < 10
    assert r.code == 1
    line = one_error_line(r.err)
    assert f"cannot reach the store at {endpoint}" in line and "is etcd running?" in line
    assert "refused the connection" in line  # said as it is, not "did not answer in time"


def test_console_script_entry_point(tmp_path: Path) -> None:
    """`python -m pgwarden` goes through the same main: exit code and one line, no traceback."""
    res = subprocess.run(
        [sys.executable, "-m", "pgwarden", "ctl", "-c", str(tmp_path / "missing.yaml"), "list"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    one_error_line(res.stderr)


def test_help_exits_zero() -> None:
    with pytest.raises(SystemExit) as exc:
        run_cli("ctl", "--help")
    assert exc.value.code == 0


def test_command_owners_match_what_each_module_registers() -> None:
    """`pgwarden COMMAND` imports the module COMMAND_OWNERS names: it must be the one that adds it."""
    import argparse
    import importlib

    from pgwarden.cli.main import COMMAND_MODULES, COMMAND_OWNERS

    registered: dict[str, str] = {}
    for name in COMMAND_MODULES:
        parser = argparse.ArgumentParser()
        sub = parser.add_subparsers()
        importlib.import_module(name).register(sub)
        registered.update(dict.fromkeys(sub.choices, name))
    assert registered == COMMAND_OWNERS


def test_agent_command_leaves_the_other_commands_unimported() -> None:
    code = ("import sys\nfrom pgwarden.cli.main import build_parser\n"
            "args = build_parser('agent').parse_args(['agent', '-c', 'x.yaml'])\n"
            "print(args.config, sorted(m for m in ('rich', 'pgwarden.cli.ctl', 'pgwarden.cli.local') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["x.yaml", "[]"]


def test_help_still_lists_every_command() -> None:
    from pgwarden.cli.main import build_parser

    for first in (None, "--help", "no-such-command"):
        text = build_parser(first).format_help()
        for command in ("agent", "ctl", "local", "witness", "node", "haproxy-config"):
            assert command in text, (first, command)


def test_agent_refuses_an_unprotected_api_beyond_loopback(tmp_path: Path) -> None:
    """Before anything starts: one line naming the file, the address and both ways out."""
    path = write_node_file(tmp_path / "n.yaml", "c1", "127.0.0.1:2379",
                           restapi={"listen_address": "0.0.0.0", "port": 8008})
    res = subprocess.run([sys.executable, "-m", "pgwarden", "agent", "-c", str(path)],
                         capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 2 and res.stdout == ""
    line = one_error_line(res.stderr)
    assert f"{path}: the REST API would listen on 0.0.0.0 (not loopback) without authentication" in line
    assert "restapi.authentication" in line and "restapi.insecure: true" in line
    assert not (tmp_path / "data").exists()  # nothing was started or created


def test_the_agent_loads_prometheus_client_only_when_scraped() -> None:
    """The agent's modules (runner, API server) do not import prometheus_client: /metrics does,
    on its first scrape (docs/observability.md, memory)."""
    code = ("import sys\nimport pgwarden.agent.runner\n"
            "print(sorted(m for m in ('prometheus_client', 'pgwarden.api.metrics') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["[]"]
