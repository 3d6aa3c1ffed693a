"""Lag limits as Patroni accepts them: bytes or 1024-based units, any case."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgwarden.api.lag import parse_lag


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("1048576", 1048576),
        ("16kB", 16 * 1024),
        ("16KB", 16 * 1024),
        ("16kb", 16 * 1024),
        ("64MB", 64 * 1024**2),
        ("1GB", 1024**3),
        ("2TB", 2 * 1024**4),
        ("100B", 100),
        (" 10 MB ", 10 * 1024**2),
        ("1.5MB", 1536 * 1024),
    ],
)
def test_parses(text: str, expected: int) -> None:
    assert parse_lag(text) == expected


@pytest.mark.parametrize("text", ["", "MB", "-1", "1PB", "1 M", "ten", "1.5", "0x10", "1e3", "9" * 100])
def test_rejects_with_a_clear_message(text: str) -> None:
    with pytest.raises(ValueError, match="lag"):
        parse_lag(text)


@given(st.integers(min_value=0, max_value=2**62), st.sampled_from(["", "B", "kB", "MB", "GB", "TB"]))
def test_round_trip(n: int, unit: str) -> None:
    mult = {"": 1, "B": 1, "kB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}[unit]
    assert parse_lag(f"{n}{unit}") == n * mult


@given(st.text(max_size=80))
def test_never_crashes(text: str) -> None:
    try:
        assert parse_lag(text) >= 0
    except ValueError:
        pass
