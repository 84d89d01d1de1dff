"""Smoke test of bench/dataplane.py: tiny sizes, every part, real namespaces.

It checks that the three tables print with positive numbers, not how fast
anything is (timings belong in the benchmark's output, not in assertions).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("dataplane")]

ROOT = Path(__file__).resolve().parents[2]
TINY = [
    "--seconds", "1", "--rr-iterations", "200", "--pings", "20",
    "--users", "200", "--apps", "20", "--groups", "20", "--policies", "100",
    "--changes", "3",
]  # fmt: skip


def cells(out: str, label: str) -> list[str]:
    """The cells after the label of the first table row that starts with ``label``."""
    for line in out.splitlines():
        if line.startswith(label):
            return re.split(r"\s{2,}", line.strip())[1:]  # labels never hold two spaces in a row
    raise AssertionError(f"no row starting with {label!r} in:\n{out}")


def number(cell: str) -> float:
    return float(cell.lstrip("~").rstrip("x"))


def positive(out: str, label: str, count: int) -> list[float]:
    values = [number(c) for c in cells(out, label)[:count]]
    assert all(v > 0 for v in values), f"{label}: {values}"
    return values


@pytest.mark.timeout(240)
def test_dataplane_bench_prints_every_table_with_positive_numbers() -> None:
    r = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "dataplane.py"), *TINY],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=200,
    )
    out = r.stdout
    assert r.returncode == 0, f"exit {r.returncode}\n{out}\n{r.stderr[-3000:]}"

    # throughput: zerogate, direct veth, plain wg-go, then the two ratios
    mbps = positive(out, "TCP throughput, 1 stream, 1 s (Mbit/s)", 5)
    assert mbps[1] > mbps[0], "the direct veth must carry more than two tunnels in a row"
    positive(out, "TCP 64 B request/response p50 (us)", 5)
    positive(out, "TCP 64 B request/response p99 (us)", 5)
    positive(out, "ping RTT p50 (us)", 5)

    # policy apply: seconds, rules, set elements
    positive(out, "per-grant table, 200 users x 20 apps: first load", 3)
    positive(out, "  same table, the same change as a full reload", 3)
    positive(out, "  same table, that source removed as an element update", 1)
    positive(out, "baseline: per-grant table, 1% of devices", 1)
    positive(out, "baseline: one flat set, 5% of devices", 3)

    # change -> enforcement: n, p50, p99, max
    for label in (
        "baseline: write -> revision watcher holds it",
        "write -> gateway enforces: access cut",
        "write -> gateway enforces: access restored",
    ):
        n, *_ = positive(out, label, 4)
        assert n == (6 if "baseline" in label else 3), f"{label}: {n} samples"
    assert "dataplane benchmark: ok" in out
