"""The `pgwarden` console script: one parser whose subcommands come from a registry of modules,
and the one place that turns every user-facing failure into a single line and an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from typing import NoReturn, Protocol, cast

from pgwarden import __version__
from pgwarden.config.errors import ConfigError
from pgwarden.errors import CliError, UsageError
from pgwarden.store.base import StoreError, StoreUnavailable

# Each module defines `register(subparsers)`, adding its subcommand(s) with
# `set_defaults(func=handler)` where `handler(args) -> int`. Modules that are not written yet are
# skipped, so other commands (witness, node, haproxy-config) plug in by existing.
COMMAND_MODULES: tuple[str, ...] = (
    "pgwarden.cli.agent_cmd",
    "pgwarden.cli.ctl",
    "pgwarden.cli.local",
    "pgwarden.cli.witness",
    "pgwarden.cli.node",
    "pgwarden.cli.haproxy_config",
    "pgwarden.cli.upgrade",
)

# The subcommand each module adds: `pgwarden agent ...` imports the agent's module alone, so the
# long-running agent does not carry the other commands' imports (rich, the local cluster's
# helpers): measured 4 MB of its resident memory (docs/benchmarks.md, footprint).
COMMAND_OWNERS: dict[str, str] = {
    "agent": "pgwarden.cli.agent_cmd",
    "ctl": "pgwarden.cli.ctl",
    "local": "pgwarden.cli.local",
    "witness": "pgwarden.cli.witness",
    "node": "pgwarden.cli.node",
    "haproxy-config": "pgwarden.cli.haproxy_config",
    "upgrade": "pgwarden.cli.upgrade",
}

Handler = Callable[[argparse.Namespace], int]


class CommandModule(Protocol):
    def register(self, subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None: ...


class Parser(argparse.ArgumentParser):
    """argparse that reports a usage mistake as one line (not usage text plus an exit)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


def build_parser(command: str | None = None) -> Parser:
    """The whole parser, or with `command` (a known subcommand name) only that subcommand's."""
    modules = (COMMAND_OWNERS[command],) if command in COMMAND_OWNERS else COMMAND_MODULES
    parser = Parser(prog="pgwarden", description="High availability for PostgreSQL.")
    parser.add_argument("--version", action="version", version=f"pgwarden {__version__}")
    sub = cast(
        "argparse._SubParsersAction[argparse.ArgumentParser]",
        parser.add_subparsers(dest="command", metavar="COMMAND", required=True),
    )
    version = sub.add_parser("version", help="print the version")
    version.set_defaults(func=_version)
    for name in modules:
        if importlib.util.find_spec(name) is None:
            continue
        module = cast(CommandModule, importlib.import_module(name))
        module.register(sub)
    return parser


def _version(args: argparse.Namespace) -> int:
    print(f"pgwarden {__version__}")
    return 0


def _fail(message: str, code: int) -> int:
    # Multi-line messages (several config errors) keep the prefix on each line.
    for line in message.splitlines() or [""]:
        sys.stderr.write(f"pgwarden: error: {line}\n")
    return code


def main(argv: list[str] | None = None) -> int:
    # Imported here so a broken optional module can't stop `main` from reporting errors.
    from pgwarden.core.requests import RequestError

    try:
        words = sys.argv[1:] if argv is None else argv
        parser = build_parser(words[0] if words else None)
        args = parser.parse_args(words)
        func = cast(Handler, args.func)
        code = func(args)
        sys.stdout.flush()  # a closed pipe shows here, where it is handled, not at exit
        return code
    except CliError as e:
        return _fail(str(e), e.code)
    except ConfigError as e:
        return _fail(str(e), 2)
    except RequestError as e:
        return _fail(str(e), 1)
    except StoreUnavailable as e:
        return _fail(f"cannot reach the store: {e}; is etcd running?", 1)
    except StoreError as e:
        return _fail(f"store: {e}", 1)
    except BrokenPipeError:
        # The reader went away (`pgwarden local status | head -3`): stop quietly, as command-line
        # tools do, and keep Python from complaining again when it flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except OSError as e:
        where = f" ({e.filename})" if e.filename else ""
        return _fail(f"{e.strerror or e}{where}", 1)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)


if __name__ == "__main__":
    raise SystemExit(main())
