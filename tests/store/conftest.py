"""Fixtures for the store tests: one real server per backend for the session, a fresh cluster
name per test (so tests share the server without seeing each other's keys)."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator

import pytest

from pgwarden.store.cluster import ClusterStore
from tests.support.backends import BACKENDS, StoreFactory

_counter = itertools.count()


@pytest.fixture(scope="session", params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def session_store_factory(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreFactory]:
    with BACKENDS[backend](tmp_path_factory.mktemp(backend)) as make_store:
        yield make_store


@pytest.fixture
def cluster(request: pytest.FixtureRequest) -> str:
    """A cluster name of its own for this test."""
    base = re.sub(r"[^A-Za-z0-9_.-]", "-", request.node.name)[:60]
    return f"{base}-{next(_counter)}"


@pytest.fixture
def make_store(session_store_factory: StoreFactory) -> Iterator[StoreFactory]:
    """`make_store(cluster)`: a new store instance, closed when the test ends."""
    made: list[ClusterStore] = []

    def make(name: str) -> ClusterStore:
        store = session_store_factory(name)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()
