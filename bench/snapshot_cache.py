"""Benchmark: building device snapshots after one config change, with the
per-revision policy cache against compiling the policy for every request.

Run: .venv/bin/python bench/snapshot_cache.py [--users N] [--apps N] [--groups N]
     [--policies N] [--requests N] [--baseline-requests N] [--seed N]

A real controller database (SQLite, ``zerogate controller init`` in a
throwaway directory) is filled with seeded random users, groups, applications,
policies and one client device per user. Then, in the same run and on the same
data, the server-side ``build_snapshot`` is timed for random client devices
and for the gateway:

- cached: one ``PolicyCache`` for every request, as the controller runs now
  (the first request of the revision compiles, the others reuse it);
- baseline: a new cache for every request, which is what every request cost
  before (load the policy inputs, compile, pick the device's part).

After a change every following device fetches once, so "all devices" is the
sum of one request per device: measured per request, multiplied out.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from ipaddress import IPv4Address
from pathlib import Path

from _common import percentile, unwind_on_sigterm

from zerogate.controller.policy_cache import PolicyCache
from zerogate.controller.services.snapshots import build_snapshot
from zerogate.store.db import Database, read_revision, utcnow
from zerogate.store.models import Account, Application, ConnectorGroup, Device, Gateway, Group, Policy
from zerogate.testbed.localrun import LocalController

PORTS = ("22", "80", "443", "3306", "5432", "8080", "8443-8450")


async def fill(db: Database, args: argparse.Namespace) -> tuple[list[int], int]:
    """Seeded random objects; returns the client device ids and the gateway's device id."""
    rng = random.Random(args.seed)
    now = utcnow()
    async with db.write() as tx:
        s = tx.session
        site = ConnectorGroup(name="bench-site", subnets=["10.0.0.0/8"], created_at=now)
        groups = [Group(name=f"g{i}", created_at=now) for i in range(args.groups)]
        s.add_all([site, *groups])
        await s.flush()
        apps = []
        for i in range(args.apps):
            dests = [
                {
                    "address": str(IPv4Address(rng.randrange(10 << 24, 11 << 24))),
                    "protocol": "tcp",
                    "ports": rng.sample(PORTS, rng.randint(1, 3)),
                }
                for _ in range(rng.randint(1, 3))
            ]
            apps.append(
                Application(name=f"a{i}", connector_group_id=site.id, destinations=dests, created_at=now)
            )
        s.add_all(apps)
        for i in range(args.policies):
            s.add(
                Policy(
                    name=f"p{i}",
                    created_at=now,
                    groups=rng.sample(groups, rng.randint(1, 3)),
                    applications=rng.sample(apps, rng.randint(1, 10)),
                )
            )
        devices = []
        for i in range(args.users):
            user = Account(
                kind="user",
                username=f"u{i}",
                status="active",
                groups=rng.sample(groups, rng.randint(1, 3)),
                created_at=now,
                updated_at=now,
            )
            s.add(user)
            await s.flush()
            devices.append(
                Device(
                    role="client",
                    name=f"laptop-{i}",
                    credential_digest=f"{i:064x}",
                    wg_public_key=f"c{i:043d}",
                    cert_serial=str(i),
                    cert_pem="",
                    account_id=user.id,
                    address=str(IPv4Address("100.64.0.10") + i),
                    session_expires_at=now + timedelta(hours=12),
                    created_at=now,
                )
            )
        gw_device = Device(
            role="gateway",
            name="edge",
            credential_digest="f" * 64,
            wg_public_key="g" * 43 + "=",
            cert_serial="0",
            cert_pem="",
            created_at=now,
        )
        s.add_all([*devices, gw_device])
        await s.flush()
        s.add(Gateway(name="edge", public_endpoint="gw.example.net", device_id=gw_device.id, created_at=now))
        tx.bump()
    return [d.id for d in devices], gw_device.id


async def timed(db: Database, device_id: int, cache: PolicyCache) -> float:
    started = time.perf_counter()
    async with db.read() as session:
        revision = await read_revision(session)
        device = await session.get(Device, device_id)
        assert device is not None
        await build_snapshot(session, device, revision, cache)
    return (time.perf_counter() - started) * 1000


async def measure(db: Database, ids: list[int], requests: int, shared: bool, seed: int) -> list[float]:
    rng = random.Random(seed)
    cache = PolicyCache()
    return [await timed(db, rng.choice(ids), cache if shared else PolicyCache()) for _ in range(requests)]


def cells(samples: list[float]) -> list[str]:
    """requests, p50 ms, p99 ms (nearest-rank)."""
    return [str(len(samples)), f"{percentile(samples, 50):.2f}", f"{percentile(samples, 99):.2f}"]


def all_devices(samples: list[float], devices: int) -> str:
    """Seconds for every device to fetch once, at the mean cost of a request."""
    return f"{devices * statistics.mean(samples) / 1000:.1f}"


async def run(args: argparse.Namespace, data: Path) -> None:
    print(f"filling a SQLite controller database: {args.users} users/devices, {args.apps} apps, "
          f"{args.groups} groups, {args.policies} policies ...", flush=True)  # fmt: skip
    lc = LocalController(data).init()
    db = Database(f"sqlite:///{lc.data_dir / 'zerogate.db'}")
    try:
        ids, gateway = await fill(db, args)
        cached = await measure(db, ids, args.requests, True, args.seed)
        baseline = await measure(db, ids, args.baseline_requests, False, args.seed)
        gw_cold = [await timed(db, gateway, PolicyCache()) for _ in range(3)]
        warm = PolicyCache()
        await timed(db, ids[0], warm)
        gw_warm = [await timed(db, gateway, warm) for _ in range(3)]
    finally:
        await db.close()
    rows = [
        ["client snapshot, cached (first one compiles)", *cells(cached), all_devices(cached, len(ids))],
        [
            "client snapshot, compile per request (baseline)",
            *cells(baseline),
            all_devices(baseline, len(ids)),
        ],
        ["gateway snapshot, cache warm", *cells(gw_warm), "-"],
        ["gateway snapshot, cold (baseline)", *cells(gw_cold), "-"],
    ]
    headers = ["what", "requests", "p50 ms", "p99 ms", f"all {len(ids)} devices once, s"]
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    for r in [headers, ["-" * w for w in widths], *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    ratio = statistics.mean(baseline) / statistics.mean(cached)
    print(f"\nper client request the cache is {ratio:.0f}x cheaper on average (mean baseline / mean cached)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=5000)
    ap.add_argument("--apps", type=int, default=500)
    ap.add_argument("--groups", type=int, default=200)
    ap.add_argument("--policies", type=int, default=500)
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--baseline-requests", type=int, default=10)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    for name in ("users", "apps", "groups", "policies", "requests", "baseline_requests"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    unwind_on_sigterm()
    with tempfile.TemporaryDirectory(prefix="zg-bench-snap-") as tmp:
        asyncio.run(run(args, Path(tmp) / "data"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
