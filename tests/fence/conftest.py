"""Fixtures shared by the fencer tests (real processes)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fence.test_fencer import Proc, running_fake_postmaster


@pytest.fixture
def fake_postmaster() -> Iterator[Proc]:
    with running_fake_postmaster() as proc:
        yield proc


@pytest.fixture
def spawned() -> Iterator[list[Proc]]:
    """Processes a test starts; each is SIGKILLed (by pid) and reaped afterwards."""
    procs: list[Proc] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(5)
