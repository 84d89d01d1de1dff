"""Smoke test of bench/snapshot_cache.py at tiny sizes: the table prints, both
modes are measured, and the cached side really was served from one compile."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_snapshot_cache_bench_prints_both_modes() -> None:
    tiny = ["--users", "50", "--apps", "10", "--groups", "5", "--policies", "10", "--requests", "20"]
    r = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "snapshot_cache.py"), *tiny, "--baseline-requests", "3"],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    rows = {re.split(r"\s{2,}", line)[0]: re.split(r"\s{2,}", line)[1:] for line in r.stdout.splitlines()}
    cached = rows["client snapshot, cached (first one compiles)"]
    baseline = rows["client snapshot, compile per request (baseline)"]
    assert cached[0] == "20" and baseline[0] == "3"
    assert float(cached[1]) > 0 and float(baseline[1]) > 0
    assert "x cheaper on average" in r.stdout
