"""The store scale benchmark's pure helpers: percentiles, the summary line scripts read, the
missed-renewal bookkeeping, and reading the servers' request counters."""

from __future__ import annotations

import math

import pytest

from bench.scale_stats import RenewalBook, Summary, parse_summary, percentile, summary_line
from bench.scale_store import parse_etcd_fsync, parse_etcd_metrics, parse_zookeeper_srvr
from pgwarden.core.settings import LEASE_MARGIN


def test_percentile_is_nearest_rank() -> None:
    xs = [float(i) for i in range(1, 101)]  # 1..100, given out of order below
    assert percentile(list(reversed(xs)), 50) == 50.0
    assert percentile(xs, 99) == 99.0
    assert percentile(xs, 100) == 100.0
    assert percentile(xs, 0) == 1.0
    assert percentile([3.0], 99) == 3.0
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError, match=r"0\.\.100"):
        percentile(xs, 101)


def test_summary_line_round_trips() -> None:
    line = summary_line(Summary(100, 2, 12.345, 7.891))
    assert line == "clusters=100 missed_renewals=2 p99_ms=12.3 store_cpu_s=7.89"
    assert parse_summary(line + "\n") == Summary(100, 2, 12.3, 7.89)
    no_calls = summary_line(Summary(1, 0, math.nan, 0.0))
    assert no_calls == "clusters=1 missed_renewals=0 p99_ms=0.0 store_cpu_s=0.00"


@pytest.mark.parametrize("bad", [
    "clusters=1 missed_renewals=0 p99_ms=1.0",  # a field missing
    "clusters=1 missed_renewals=-1 p99_ms=1.0 store_cpu_s=0.1",
    "x clusters=1 missed_renewals=0 p99_ms=1.0 store_cpu_s=0.1",
])
def test_parse_summary_refuses_other_lines(bad: str) -> None:
    with pytest.raises(ValueError, match="not a scale summary line"):
        parse_summary(bad)


TTL = 4.0


def book_acquired_at(t: float) -> RenewalBook:
    book = RenewalBook(TTL)
    book.acquired(t)
    assert book.lease.deadline == t + TTL - LEASE_MARGIN
    return book


def test_renewals_in_time_move_the_deadline_from_the_send_time() -> None:
    book = book_acquired_at(0.0)
    book.renewal(sent_at=1.0, done_at=1.9, ok=True)  # a slow answer: the send time counts
    assert book.lease.deadline == 1.0 + TTL - LEASE_MARGIN
    assert (book.missed, book.renewals) == (0, 1)


def test_a_failed_renewal_is_a_miss_only_once_its_deadline_passed() -> None:
    book = book_acquired_at(0.0)
    book.renewal(sent_at=1.0, done_at=2.0, ok=False)  # time left: the next loop may make it
    assert book.missed == 0 and book.lease.held
    book.renewal(sent_at=2.0, done_at=2.1, ok=True)
    assert book.missed == 0 and book.lease.deadline == 2.0 + TTL - LEASE_MARGIN


def test_a_renewal_answering_after_the_deadline_is_missed() -> None:
    book = book_acquired_at(0.0)
    deadline = book.lease.deadline
    book.renewal(sent_at=deadline - 0.5, done_at=deadline + 0.01, ok=True)
    assert book.missed == 1
    assert book.lease.held  # the key was still ours: held again from that renewal's send time
    assert book.lease.deadline == deadline - 0.5 + TTL - LEASE_MARGIN


def test_a_lapsed_deadline_counts_once() -> None:
    book = book_acquired_at(0.0)
    deadline = book.lease.deadline
    assert not book.lapsed(deadline - 0.01)
    assert book.lapsed(deadline)
    assert not book.lapsed(deadline + 1.0)  # already counted, lease lost
    book.renewal(sent_at=deadline + 1.0, done_at=deadline + 9.0, ok=False)  # not held: no new miss
    assert book.missed == 1
    book.renewal(sent_at=deadline + 2.0, done_at=deadline + 2.1, ok=True)  # taken back
    assert book.lease.held and book.missed == 1


def test_call_timeout_is_clipped_to_the_lease() -> None:
    book = book_acquired_at(0.0)
    assert book.call_timeout(0.0, 1.0) == 1.0
    assert book.call_timeout(book.lease.deadline - 0.5, 1.0) == pytest.approx(0.25)


def test_etcd_metrics_are_summed_per_method() -> None:
    text = "\n".join([
        "# HELP grpc_server_msg_received_total Total number of RPC stream messages received.",
        'grpc_server_msg_received_total{grpc_method="Range",grpc_service="etcdserverpb.KV",'
        'grpc_type="unary"} 12',
        'grpc_server_msg_received_total{grpc_method="LeaseKeepAlive",grpc_service="etcdserverpb.Lease",'
        'grpc_type="bidi_stream"} 3',
        'grpc_server_msg_received_total{grpc_method="Put",grpc_service="etcdserverpb.KV",'
        'grpc_type="unary"} 0',
        'grpc_server_msg_received_total{grpc_method="Watch",grpc_service="grpc.health.v1.Health",'
        'grpc_type="server_stream"} 5',
        'grpc_server_started_total{grpc_method="Range",grpc_service="etcdserverpb.KV",grpc_type="unary"} 12',
    ])
    assert parse_etcd_metrics(text) == {"Range": 12, "LeaseKeepAlive": 3}


def test_zookeeper_srvr_received_packets() -> None:
    text = "Zookeeper version: 3.9.1\nLatency min/avg/max: 0/0.4/12\nReceived: 4711\nSent: 4712\n"
    assert parse_zookeeper_srvr(text) == {"packets": 4711}
    with pytest.raises(ValueError, match="Received"):
        parse_zookeeper_srvr("Mode: standalone\n")


def test_etcd_wal_fsync_sum_and_count() -> None:
    text = ("etcd_disk_wal_fsync_duration_seconds_bucket{le=\"0.001\"} 3\n"
            "etcd_disk_wal_fsync_duration_seconds_sum 0.25\n"
            "etcd_disk_wal_fsync_duration_seconds_count 100\n")
    assert parse_etcd_fsync(text) == (0.25, 100)
    assert parse_etcd_fsync("process_cpu_seconds_total 1\n") is None
