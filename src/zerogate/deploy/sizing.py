"""Hardware sizing per role, with the basis for every number. Pure.

Two kinds of evidence, always named in the answer:

* the product's reference sizing tables (users and Mbit/s per connector,
  the network-connector baseline, assets per segment server), quoted by their
  own names in every answer, never by a document's section number, and
* zerogate's own benchmark figures (README.md, "Benchmarks"), for the
  controller, which has no reference row.

Where neither covers the request (a gateway, a controller beyond the measured
size, disks) the figure is marked as a zerogate assumption or estimate.

Errors: :class:`SizingError` (``ValueError``) for inputs that are missing,
not positive, or beyond :data:`LIMITS`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "BENCHMARKS",
    "CONNECTOR_ROWS",
    "LIMITS",
    "NETWORK_CONNECTOR",
    "ROLES",
    "SEGMENT_ROWS",
    "HostMinimum",
    "Sizing",
    "SizingError",
    "host_minimum",
    "size",
]

ROLES = ("controller", "gateway", "connector", "segment")

REQ_CONNECTOR = "reference sizing for connectors (users and Mbit/s per connector)"
REQ_NETWORK_CONNECTOR = "reference baseline for a network connector host"
REQ_SEGMENT = "reference sizing for segment servers (assets per server)"
README_BENCH = "README.md, Benchmarks (one run on the 2-core development machine, SQLite)"


class SizingError(ValueError):
    """Sizing inputs that cannot be used."""


@dataclass(frozen=True)
class Row:
    """One line of a reference table, quoted as ``text``."""

    text: str
    cores: int
    memory_gb: int
    max_users: int = 0
    max_mbps: int = 0
    max_assets: int = 0


CONNECTOR_ROWS = (
    Row("15 Mbit/s - 100 users → 1 core / 2 GB", 1, 2, max_users=100, max_mbps=15),
    Row("50 Mbit/s - 500 users → 2 cores / 4 GB", 2, 4, max_users=500, max_mbps=50),
    Row("100 Mbit/s - 1,000 users → 8 cores / 16 GB", 8, 16, max_users=1000, max_mbps=100),
)


@dataclass(frozen=True)
class Baseline:
    text: str
    min_cores: int
    max_cores: int
    memory_gb: int
    disk_gb: int


NETWORK_CONNECTOR = Baseline("Network connector: 4 GB RAM, 2-8 cores, 64 GB disk", 2, 8, 4, 64)

SEGMENT_ROWS = (
    Row("1,000 assets on 2 cores / 4 GB", 2, 4, max_assets=1000),
    Row("2,000 assets on 4 cores / 8 GB", 4, 8, max_assets=2000),
    Row("5,000 assets on 8 cores / 16 GB", 8, 16, max_assets=5000),
    Row("10,000 assets on 16 cores / 16 GB (one server)", 16, 16, max_assets=10000),
)


@dataclass(frozen=True)
class Benchmark:
    name: str
    workload: str
    result: str


BENCHMARKS = (
    Benchmark(
        "bench/policy_compile.py",
        "10,000 users, 1,000 apps, 200 groups, 2,000 policies",
        "compile 0.20-0.43 s (6.9 M expanded allow tuples)",
    ),
    Benchmark(
        "bench/controller_propagation.py",
        "API write → long-polling watcher has the new revision, 200 changes",
        "p50 18-25 ms, p99 27-97 ms",
    ),
    Benchmark(
        "bench/enrollment_roundtrip.py",
        "install string → enrolled, 100 enrollments",
        "p50 48 ms, p99 103 ms",
    ),
)
# The measured point the controller figures scale from.
BENCH_USERS = 10_000
BENCH_CORES = 2
BENCH_COMPILE_SECONDS = (0.20, 0.43)

# zerogate's own defaults where no reference gives a figure.
CONTROLLER_TIERS = (  # (max users, cores, memory GB, disk GB)
    (BENCH_USERS, 2, 4, 20),
    (50_000, 4, 8, 50),
    (1_000_000, 8, 16, 100),
)
SEGMENT_DISK_GB = 100  # the segment sizing table gives 100 GB at every row

LIMITS = {"users": 1_000_000, "bandwidth": 100_000, "assets": 1_000_000}
_UNITS = {"users": "users", "bandwidth": "Mbit/s", "assets": "assets"}
_NEEDS = {
    "connector": ("users", "bandwidth"),
    "gateway": ("users", "bandwidth"),
    "controller": ("users",),
    "segment": ("assets",),
}


@dataclass(frozen=True)
class Sizing:
    """The recommendation for one role: per instance, times ``instances``."""

    role: str
    instances: int
    cores: int
    memory_gb: int
    disk_gb: int
    basis: tuple[str, ...]
    notes: tuple[str, ...] = ()
    inputs: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "inputs": dict(self.inputs),
            "instances": self.instances,
            "per_instance": {"cores": self.cores, "memory_gb": self.memory_gb, "disk_gb": self.disk_gb},
            "basis": list(self.basis),
            "notes": list(self.notes),
        }


def _validate(role: str, values: dict[str, int | None]) -> dict[str, int]:
    if role not in _NEEDS:
        raise SizingError(f"unknown role {role!r}: choose one of {', '.join(ROLES)}")
    needed = _NEEDS[role]
    missing = [name for name in needed if values.get(name) is None]
    if missing:
        flags = " and ".join(f"--{n}" for n in needed)
        raise SizingError(f"sizing a {role} needs {flags} (missing: {', '.join('--' + m for m in missing)})")
    extra = [name for name, v in values.items() if v is not None and name not in needed]
    if extra:
        used = " and ".join(f"--{n}" for n in needed)
        raise SizingError(
            f"{', '.join('--' + e for e in extra)} does not apply to a {role} (it is sized by {used})"
        )
    checked: dict[str, int] = {}
    for name in needed:
        value = values[name]
        assert value is not None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SizingError(f"--{name} must be a positive whole number of {_UNITS[name]}, got {value!r}")
        if value > LIMITS[name]:
            raise SizingError(
                f"--{name} {value:,} is beyond what this tool sizes (at most {LIMITS[name]:,} "
                f"{_UNITS[name]}); split the deployment or size it with a measurement"
            )
        checked[name] = value
    return checked


def _row_for(rows: tuple[Row, ...], users: int = 0, mbps: int = 0, assets: int = 0) -> Row:
    for row in rows:
        if users <= row.max_users and mbps <= row.max_mbps and assets <= row.max_assets:
            return row
    return rows[-1]


def _tunnel_edge(role: str, users: int, mbps: int) -> Sizing:
    top = CONNECTOR_ROWS[-1]
    instances = max(1, math.ceil(users / top.max_users), math.ceil(mbps / top.max_mbps))
    per_users, per_mbps = math.ceil(users / instances), math.ceil(mbps / instances)
    row = _row_for(CONNECTOR_ROWS, users=per_users, mbps=per_mbps)
    base = NETWORK_CONNECTOR
    cores = min(max(row.cores, base.min_cores), base.max_cores)
    memory = max(row.memory_gb, base.memory_gb)
    basis = [
        f"{REQ_CONNECTOR}: row '{row.text}' covers {per_users:,} users at {per_mbps:,} Mbit/s"
        + (" per instance" if instances > 1 else ""),
        f"{REQ_NETWORK_CONNECTOR}: '{base.text}'"
        + (" (raises the row to this floor)" if (cores, memory) != (row.cores, row.memory_gb) else ""),
    ]
    notes = []
    if instances > 1:
        notes.append(
            f"{users:,} users / {mbps:,} Mbit/s is beyond the largest reference row "
            f"({top.max_users:,} users, {top.max_mbps} Mbit/s): split the load over {instances} {role}s"
        )
    if role == "gateway":
        basis.append(
            "zerogate assumption: there is no reference row for gateways; a gateway terminates the "
            "same WireGuard tunnels as the connectors behind it, so the connector rows are applied to "
            "its total users and bandwidth"
        )
        notes.append("run at least two gateways so that clients and connectors can fail over")
    else:
        notes.append(
            "add one more connector to the group for failover: when no connector of a group is up, "
            "its applications are unreachable"
        )
    return Sizing(role, instances, cores, memory, base.disk_gb, tuple(basis), tuple(notes))


def _controller(users: int) -> Sizing:
    tier = next(t for t in CONTROLLER_TIERS if users <= t[0])
    _, cores, memory, disk = tier
    low, high = BENCH_COMPILE_SECONDS
    bench = "; ".join(f"{b.name}: {b.workload}: {b.result}" for b in BENCHMARKS)
    basis = [f"{README_BENCH}: {bench}"]
    notes: list[str] = []
    if users <= BENCH_USERS:
        basis.append(
            f"measured: up to {BENCH_USERS:,} users the {BENCH_CORES}-core benchmark machine recompiles "
            f"policy in {low:.2f}-{high:.2f} s per change; {cores} cores / {memory} GB matches it"
        )
    else:
        factor = users / BENCH_USERS
        basis.append(
            f"zerogate estimate beyond the measured {BENCH_USERS:,} users: policy compile grows about "
            f"linearly with users, so about {low * factor:.1f}-{high * factor:.1f} s per change here; "
            "more cores keep the API responsive while it runs"
        )
        notes.append("use PostgreSQL rather than the embedded SQLite at this size")
        notes.append("beyond the measured size: run 'make bench' with your numbers to confirm")
    basis.append(f"zerogate default disk: {disk} GB for the database and the append-only audit log")
    return Sizing("controller", 1, cores, memory, disk, tuple(basis), tuple(notes))


def _segment(assets: int) -> Sizing:
    top = SEGMENT_ROWS[-1]
    instances = max(1, math.ceil(assets / top.max_assets))
    per_assets = math.ceil(assets / instances)
    row = _row_for(SEGMENT_ROWS, assets=per_assets)
    basis = [
        f"{REQ_SEGMENT}: row '{row.text}' covers {per_assets:,} assets"
        + (" per server" if instances > 1 else ""),
        f"segment sizing table: {SEGMENT_DISK_GB} GB disk at every size, for flow history, baselines and logs",
    ]
    notes = []
    if instances > 1:
        notes.append(
            f"{assets:,} assets is beyond one server ({top.max_assets:,} assets): "
            f"split the assets over {instances} segment servers"
        )
    return Sizing("segment", instances, row.cores, row.memory_gb, SEGMENT_DISK_GB, tuple(basis), tuple(notes))


def size(
    role: str,
    *,
    users: int | None = None,
    bandwidth_mbps: int | None = None,
    assets: int | None = None,
) -> Sizing:
    """Recommend cores, memory and disk for ``role`` at the given load."""
    given = _validate(role, {"users": users, "bandwidth": bandwidth_mbps, "assets": assets})
    if role in ("connector", "gateway"):
        result = _tunnel_edge(role, given["users"], given["bandwidth"])
    elif role == "controller":
        result = _controller(given["users"])
    else:
        result = _segment(given["assets"])
    return Sizing(
        result.role,
        result.instances,
        result.cores,
        result.memory_gb,
        result.disk_gb,
        result.basis,
        result.notes,
        given,
    )


# --------------------------------------------------------------------------- preflight minimums


@dataclass(frozen=True)
class HostMinimum:
    """What ``zerogate preflight`` holds a host to: below ``min_*`` fails, below ``rec_*`` warns."""

    role: str
    min_cores: int
    min_memory_gb: int
    rec_cores: int
    rec_memory_gb: int
    min_free_disk_gb: int
    rec_disk_gb: int
    source: str


def host_minimum(role: str) -> HostMinimum:
    """The smallest host that can run ``role`` (fail below) and the recommended one (warn below)."""
    smallest = CONNECTOR_ROWS[0]
    base = NETWORK_CONNECTOR
    if role in ("connector", "gateway"):
        return HostMinimum(
            role,
            smallest.cores,
            smallest.memory_gb,
            base.min_cores,
            base.memory_gb,
            2,
            base.disk_gb,
            f"minimum: {REQ_CONNECTOR} '{smallest.text}'; recommended: {REQ_NETWORK_CONNECTOR} '{base.text}'",
        )
    if role == "controller":
        _, cores, memory, disk = CONTROLLER_TIERS[0]
        return HostMinimum(
            role,
            1,
            2,
            cores,
            memory,
            5,
            disk,
            f"recommended: the {BENCH_CORES}-core benchmark machine ({README_BENCH}); minimum: zerogate default",
        )
    if role == "segment":
        row = SEGMENT_ROWS[0]
        return HostMinimum(
            role,
            row.cores,
            row.memory_gb,
            row.cores,
            row.memory_gb,
            5,
            SEGMENT_DISK_GB,
            f"{REQ_SEGMENT} '{row.text}'",
        )
    raise SizingError(f"unknown role {role!r}: choose one of {', '.join(ROLES)}")
