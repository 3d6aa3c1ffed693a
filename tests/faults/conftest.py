"""Options of the fault-injection suite: `--duration SECONDS` (how long faults are injected per
run; the default keeps the suite short), `--seed N` (replay a schedule a run printed) and
`--fault-kinds KIND[,KIND...]` (draw the schedule from these kinds only)."""

from __future__ import annotations

import pytest

DEFAULT_DURATION = 20.0
# Bootstrap, recovery of the last step, convergence, checks and teardown, on top of --duration.
OVERHEAD = 240.0


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("pgwarden fault injection")
    group.addoption("--duration", type=float, default=None, metavar="SECONDS",
                    help=f"seconds of fault injection per fault run (default {DEFAULT_DURATION:g})")
    group.addoption("--seed", type=int, default=None, metavar="N",
                    help="seed of the fault schedule (default: a fresh one, printed)")
    group.addoption("--fault-kinds", default=None, metavar="KIND[,KIND...]",
                    help="draw fault schedules from these kinds only (comma-separated; see "
                         "tests/faults/schedule.py KINDS); a run whose store none of them applies "
                         "to is skipped")


def duration(config: pytest.Config) -> float:
    value = config.getoption("--duration", default=None)
    return DEFAULT_DURATION if value is None else float(value)


def seed(config: pytest.Config) -> int | None:
    value = config.getoption("--seed", default=None)
    return None if value is None else int(value)


def fault_kinds(config: pytest.Config) -> tuple[str, ...] | None:
    """The kinds `--fault-kinds` names (validated), or None for every kind of the store."""
    value = config.getoption("--fault-kinds", default=None)
    if value is None:
        return None
    from tests.faults.schedule import KINDS

    kinds = tuple(dict.fromkeys(k.strip() for k in str(value).split(",") if k.strip()))
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise pytest.UsageError(f"--fault-kinds: unknown kind(s) {unknown or value!r}; "
                                f"known: {', '.join(KINDS)}")
    return kinds


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "fault_run: a whole fault-injection run (timeout follows --duration)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    fault_kinds(config)  # a misspelt kind is a usage error before anything starts
    # pytest-timeout reads the marker when the test starts: a longer --duration needs a longer
    # timeout, set here before any test runs.
    for item in items:
        if item.get_closest_marker("fault_run") is not None:
            item.add_marker(pytest.mark.timeout(duration(config) * 2 + OVERHEAD))
