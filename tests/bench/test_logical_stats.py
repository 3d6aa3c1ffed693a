"""The logical replication benchmark's pure helpers: the median / max summary, the exact-rows
comparison, throughput and the printed tables."""

from __future__ import annotations

import math

import pytest

from bench.logical_stats import (
    RUN_HEADER,
    RunResult,
    mb_per_s,
    median_max,
    missing_extra,
    render_table,
    run_rows,
)


def test_median_max() -> None:
    assert median_max([3.0, 1.0, 2.0, 10.0]) == "2.50 / 10.00 s over 4"
    assert median_max([1.234]) == "1.23 / 1.23 s over 1"
    assert median_max([]) == "no samples"


def test_missing_extra_counts_both_sides_and_doubles() -> None:
    assert missing_extra([(1, 5432), (2, 5432)], [(2, 5432), (1, 5432)]) == (0, 0)
    assert missing_extra([(1, 1), (2, 1), (3, 2)], [(1, 1), (4, 2)]) == (2, 1)
    assert missing_extra([1, 2], [1, 2, 2]) == (0, 1)  # a doubled row is extra
    assert missing_extra([], []) == (0, 0)


def test_mb_per_s() -> None:
    assert mb_per_s(100.0, 4.0) == 25.0
    assert math.isnan(mb_per_s(100.0, 0.0))


def test_render_table_pads_columns() -> None:
    out = render_table(("row", "value"), [("a", "1"), ("longer row", "22")])
    assert out.splitlines() == [
        "row        | value",
        "-----------|------",
        "a          | 1",
        "longer row | 22",
    ]
    with pytest.raises(ValueError, match="2 cells"):
        render_table(("row", "value"), [("only one",)])


def test_run_rows_match_the_header() -> None:
    rows = run_rows([RunResult("node1", "node2", 3.456, 4.5, 0, 1)])
    assert rows == [("1", "node1 -> node2", "3.46", "4.50", "0", "1")]
    assert len(rows[0]) == len(RUN_HEADER)
    assert "4.50" in render_table(RUN_HEADER, rows)
