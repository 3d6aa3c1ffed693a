"""The upgrade benchmark's pure helpers: gaps, the unavailability span across a version switch,
duplicates, when the standbys streamed again, and the table."""

from __future__ import annotations

from bench.upgrade_stats import (
    Attempt,
    Figures,
    Row,
    error_summary,
    figures,
    longest_gap,
    markdown_table,
    standbys_back,
    streaming_since,
    unavailability,
)


def ack(start: float, end: float, id_: int, major: int) -> Attempt:
    return Attempt(start, end, id_, major)


def fail(start: float, end: float, connecting: bool = False, error: str = "OperationalError") -> Attempt:
    return Attempt(start, end, error=error, connecting=connecting)


# The writer's view of a switch: two commits on 15, a blocked INSERT that fails, two failed
# connects, then commits on 18.
SWITCH = [
    ack(0.0, 0.1, 1, 15),
    ack(0.2, 0.3, 2, 15),
    fail(0.35, 2.35),  # blocked 2 s, then failed
    fail(2.4, 2.5, connecting=True),
    fail(2.6, 2.7, connecting=True),
    ack(2.8, 3.0, 3, 18),
    ack(3.1, 3.2, 4, 18),
]


def test_longest_gap_is_between_acknowledgements() -> None:
    assert longest_gap(SWITCH) == 3.0 - 0.3
    assert longest_gap(SWITCH[:1]) == 0.0
    assert longest_gap([]) == 0.0


def test_unavailability_runs_from_the_first_write_not_acknowledged_by_the_old_version() -> None:
    assert unavailability(SWITCH, 15, 18) == (0.35, 3.0)
    assert unavailability(SWITCH, 18, 15) is None  # never back on 15
    assert unavailability(SWITCH[:2], 15, 18) is None  # never on 18
    # A seamless switch: the next attempt after the last 15 commit is the first 18 one.
    seamless = [ack(0.0, 0.1, 1, 15), ack(0.2, 0.25, 2, 18)]
    assert unavailability(seamless, 15, 18) == (0.2, 0.25)


def test_figures_split_failed_transactions_from_failed_connects() -> None:
    f = figures(SWITCH, 15, 18)
    assert (f.failed_tx, f.failed_connects, f.duplicates) == (1, 2, 0)
    assert f.longest_tx == 2.0
    assert f.unavailable is not None and abs(f.unavailable - 2.65) < 1e-9


def test_error_summary_counts_messages_most_frequent_first() -> None:
    att = [Attempt(0, 1, message="a"), Attempt(1, 2, message="b"), Attempt(2, 3, message="b"),
           ack(3, 4, 1, 15)]
    assert error_summary(att) == '2x "b"; 1x "a"'
    assert error_summary(att, top=1) == '2x "b"'
    assert error_summary(att[3:]) == "no errors"


def test_duplicates_count_unique_violations_and_repeated_ids() -> None:
    att = [ack(0, 1, 7, 15), fail(1, 2, error="UniqueViolation"), ack(2, 3, 7, 18)]
    assert figures(att, 15, 18).duplicates == 2


def test_standbys_back_counts_from_the_start_until_streaming_for_good() -> None:
    samples = [(0.0, True), (1.0, False), (2.0, True), (3.0, False), (4.0, True), (5.0, True)]
    assert streaming_since(samples) == 4.0
    assert standbys_back(samples, 0.5) == 3.5
    assert standbys_back([(0.0, True), (1.0, True)], 0.5) == 0.0  # never stopped: 0
    assert standbys_back(samples[:4], 0.5) is None  # not streaming at the end
    assert standbys_back([], 0.5) is None


def test_markdown_table_has_one_row_per_method() -> None:
    f = Figures(failed_tx=0, failed_connects=0, longest_gap=0.1234, longest_tx=0.05, duplicates=0,
                unavailable=None)
    text = markdown_table([Row("pgwarden local upgrade (15 -> 18)", f, 0, 0.0, "PostgreSQL 18.1")])
    lines = text.splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("| tool / method | failed tx |")
    assert lines[1].count("---|") == lines[0].count(" | ") + 1
    assert lines[2] == ("| pgwarden local upgrade (15 -> 18) | 0 | 0 | 0.123 / 0.050 | 0 | 0 | n/a | 0.000 "
                        "| PostgreSQL 18.1 |")
