"""Fixtures for the local-cluster tests: a directory PostgreSQL's OS user can traverse (pytest's
own tmp_path lives under a 0700 directory when we run as root)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def open_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="pgwarden-test-", dir="/tmp"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)
