"""Sizing math against the reference tables, input validation, and the CLI."""

from __future__ import annotations

import json
import subprocess

import pytest
from typer.testing import CliRunner

from zerogate.cli.main import app
from zerogate.deploy.sizing import SizingError, host_minimum, size
from zerogate.testbed.localrun import zerogate_argv

runner = CliRunner()


@pytest.mark.parametrize(
    ("users", "mbps", "row", "cores", "memory"),
    [
        (50, 10, "15 Mbit/s - 100 users", 2, 4),  # the smallest row, raised to the network-connector floor
        (100, 15, "15 Mbit/s - 100 users", 2, 4),
        (101, 15, "50 Mbit/s - 500 users", 2, 4),  # one user too many for the first row
        (100, 16, "50 Mbit/s - 500 users", 2, 4),  # bandwidth decides too
        (300, 40, "50 Mbit/s - 500 users", 2, 4),
        (501, 10, "100 Mbit/s - 1,000 users", 8, 16),
        (1000, 100, "100 Mbit/s - 1,000 users", 8, 16),
    ],
)
def test_connector_uses_the_first_reference_row_that_covers_users_and_bandwidth(
    users: int, mbps: int, row: str, cores: int, memory: int
) -> None:
    s = size("connector", users=users, bandwidth_mbps=mbps)
    assert (s.instances, s.cores, s.memory_gb, s.disk_gb) == (1, cores, memory, 64)
    assert f"row '{row}" in s.basis[0] and "reference sizing for connectors" in s.basis[0]
    assert f"covers {users:,} users at {mbps:,} Mbit/s" in s.basis[0]
    assert "Network connector: 4 GB RAM, 2-8 cores, 64 GB disk" in s.basis[1]
    assert ("raises the row to this floor" in s.basis[1]) == row.startswith("15 ")
    assert any("failover" in n for n in s.notes)


def test_beyond_the_largest_row_the_load_is_split_over_several_connectors() -> None:
    s = size("connector", users=2500, bandwidth_mbps=120)
    # 2,500 users need three instances of the 1,000-user row; each carries 834 users at 40 Mbit/s.
    assert (s.instances, s.cores, s.memory_gb) == (3, 8, 16)
    assert "covers 834 users at 40 Mbit/s per instance" in s.basis[0]
    assert any("split the load over 3 connectors" in n for n in s.notes)
    by_bandwidth = size("connector", users=200, bandwidth_mbps=450)
    assert by_bandwidth.instances == 5 and "covers 40 users at 90 Mbit/s" in by_bandwidth.basis[0]
    assert by_bandwidth.cores == 8  # 90 Mbit/s needs the largest row


def test_a_gateway_is_sized_like_the_connectors_behind_it_and_says_so() -> None:
    s = size("gateway", users=300, bandwidth_mbps=40)
    assert (s.cores, s.memory_gb) == (2, 4)
    assert any("no reference row for gateways" in b for b in s.basis)
    assert any("two gateways" in n for n in s.notes)


def test_controller_quotes_the_benchmarks_and_marks_extrapolation() -> None:
    small = size("controller", users=5000)
    assert (small.cores, small.memory_gb, small.disk_gb) == (2, 4, 20)
    assert "README.md, Benchmarks" in small.basis[0]
    assert "10,000 users, 1,000 apps" in small.basis[0] and "compile 0.20-0.43 s" in small.basis[0]
    assert "p50 48 ms" in small.basis[0]
    assert small.basis[1].startswith("measured:")
    big = size("controller", users=20_000)
    assert (big.cores, big.memory_gb) == (4, 8)
    assert "estimate beyond the measured 10,000 users" in big.basis[1]
    assert "0.4-0.9 s per change" in big.basis[1]  # 2 x 0.20-0.43 s
    assert any("PostgreSQL" in n for n in big.notes)
    assert size("controller", users=200_000).cores == 8


@pytest.mark.parametrize(
    ("assets", "instances", "cores", "memory", "row"),
    [
        (1, 1, 2, 4, "1,000 assets on 2 cores / 4 GB"),
        (1000, 1, 2, 4, "1,000 assets"),
        (1001, 1, 4, 8, "2,000 assets"),
        (5000, 1, 8, 16, "5,000 assets"),
        (10_000, 1, 16, 16, "10,000 assets on 16 cores / 16 GB"),
        (25_000, 3, 16, 16, "10,000 assets"),
    ],
)
def test_segment_rows(assets: int, instances: int, cores: int, memory: int, row: str) -> None:
    s = size("segment", assets=assets)
    assert (s.instances, s.cores, s.memory_gb) == (instances, cores, memory)
    assert f"row '{row}" in s.basis[0] and "reference sizing for segment servers" in s.basis[0]
    assert s.disk_gb == 100 and "100 GB disk at every size" in s.basis[1]


@pytest.mark.parametrize(
    ("role", "kwargs", "message"),
    [
        (
            "connector",
            {"users": 10},
            "sizing a connector needs --users and --bandwidth (missing: --bandwidth)",
        ),
        ("segment", {}, "needs --assets"),
        (
            "connector",
            {"users": 10, "bandwidth_mbps": 5, "assets": 3},
            "--assets does not apply to a connector",
        ),
        ("controller", {"users": 10, "bandwidth_mbps": 5}, "--bandwidth does not apply to a controller"),
        ("controller", {"users": 0}, "--users must be a positive whole number of users, got 0"),
        (
            "connector",
            {"users": 5, "bandwidth_mbps": -1},
            "--bandwidth must be a positive whole number of Mbit/s",
        ),
        ("segment", {"assets": 1_000_001}, "--assets 1,000,001 is beyond what this tool sizes"),
        ("router", {"users": 1}, "unknown role 'router'"),
    ],
)
def test_bad_inputs_get_clear_errors(role: str, kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(SizingError) as info:
        size(role, **kwargs)  # type: ignore[arg-type]
    assert message in str(info.value)


def test_host_minimums_come_from_the_same_tables() -> None:
    c = host_minimum("connector")
    assert (c.min_cores, c.min_memory_gb, c.rec_cores, c.rec_memory_gb, c.rec_disk_gb) == (1, 2, 2, 4, 64)
    s = host_minimum("segment")
    assert (s.min_cores, s.min_memory_gb) == (2, 4)
    with pytest.raises(SizingError):
        host_minimum("router")


def test_cli_prints_the_recommendation_and_its_basis() -> None:
    r = runner.invoke(app, ["sizing", "--role", "connector", "--users", "300", "--bandwidth", "40"])
    assert r.exit_code == 0, r.output
    assert "cores" in r.output and "4 GB" in r.output and "64 GB" in r.output
    assert "50 Mbit/s - 500 users" in r.output and "Basis" in r.output
    r = runner.invoke(app, ["sizing", "--role", "controller", "--users", "5000"])
    assert r.exit_code == 0 and "bench/policy_compile.py" in r.output


def test_cli_rejects_bad_input_with_exit_status_2() -> None:
    r = runner.invoke(app, ["sizing", "--role", "segment", "--assets", "5", "--users", "10"])
    assert r.exit_code == 2
    assert "--users does not apply to a segment" in r.output
    r = runner.invoke(app, ["sizing", "--role", "connector", "--users", "ten", "--bandwidth", "5"])
    assert r.exit_code == 2  # Typer refuses a non-number


def test_cli_json_as_a_subprocess() -> None:
    r = subprocess.run(
        [*zerogate_argv(), "sizing", "--role", "segment", "--assets", "2000", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["per_instance"] == {"cores": 4, "memory_gb": 8, "disk_gb": 100}
    assert data["inputs"] == {"assets": 2000} and data["instances"] == 1
    assert any("2,000 assets on 4 cores / 8 GB" in b for b in data["basis"])
