"""The errors a command raises for `pgwarden`'s `main` to report. They import nothing, so any layer
(the CLI, `pgwarden local`) can raise them, and the agent, which imports `main`, loads no rich."""

from __future__ import annotations


class CliError(Exception):
    """A user-facing failure: `main` prints `pgwarden: error: <message>` and exits with `code`
    (2 = bad usage or configuration, 1 = the operation failed)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class UsageError(CliError):
    def __init__(self, message: str) -> None:
        super().__init__(message, 2)
