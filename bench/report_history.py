"""Benchmark: what the report history costs — the report POST with and without it,
and the rows and bytes a device adds per day.

Run: .venv/bin/python bench/report_history.py [--devices N] [--rounds R]
     [--database URL --database-off URL] [--time-limit S]

Starts two real controllers on 127.0.0.1 in the same run: one with the history
at its defaults (one sample per device per 60 s, kept 7 days), one with it off
(``report_history_days = 0``). N connectors enroll on each and POST the same
report (a gateway connector peer and 50 clients) over kept-alive connections,
the two controllers taking turns device by device (who goes first alternating) so
both see the same machine load:

- round 1: every device's first report, which on the history side writes a sample;
- rounds 2..R: reports within the interval, where the history only looks up the
  device's newest sample (the (device_id, at) index) and writes nothing: at the
  default interval and a 5-s report interval, 11 of every 12 reports.

Then a day of samples (1,440 per device at the default interval) is written into
the history side's database and its size measured: SQLite's ``dbstat`` (table
plus both indexes) or PostgreSQL's ``pg_total_relation_size``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from _common import add_controller_options, percentile, run_in_scratch_dir
from sqlalchemy import func, select, text

from zerogate.controller.reports import DeviceReport
from zerogate.controller.services.report_history import sample_of
from zerogate.netops.controller_api import ControllerClient
from zerogate.pki.ca import create_csr, generate_private_key
from zerogate.pki.wireguard import generate_keypair
from zerogate.store.db import Database, utcnow
from zerogate.store.models import Device
from zerogate.store.models_history import ReportSample
from zerogate.testbed.localrun import LocalController

GROUP = "bench-history"
SAMPLES_PER_DAY = 86400 // 60  # the default report_history_interval


def report() -> dict[str, Any]:
    now = int(time.time())
    peers = [
        {"role": "gateway", "public_key": "g" * 43 + "=", "name": "edge", "latest_handshake": now - 20,
         "rx_bytes": 10**9, "tx_bytes": 2 * 10**9},
    ] + [
        {"role": "client", "public_key": f"{i:0>43}=", "latest_handshake": now - i, "rx_bytes": i, "tx_bytes": i}
        for i in range(50)
    ]  # fmt: skip
    return {"version": "0.1.0", "interface": "zg-cn", "peers": peers, "details": {"tunnel_up": True}}


def enroll(controller_url: str, admin: ControllerClient, ca_pem: bytes, n: int) -> list[ControllerClient]:
    """N connectors, each with its own kept-alive client holding its credential."""
    admin.post("/v1/connector-groups", {"name": GROUP, "subnets": ["10.252.0.0/24"]})
    key = admin.post(f"/v1/connector-groups/{GROUP}/provisioning-keys", {"max_uses": n})["key"]
    clients = []
    with ControllerClient(controller_url, ca_pem) as c:
        for i in range(n):
            body = {
                "key": key,
                "name": f"bh-{i:04d}",
                "csr": create_csr(generate_private_key(), f"bh-{i}").decode(),
                "wg_public_key": generate_keypair()[1],
            }
            credential = c.post("/v1/enroll", body)["credential"]
            clients.append(ControllerClient(controller_url, ca_pem, token=credential))
    return clients


async def day_of_samples(url: str) -> tuple[int, int, int]:
    """Write a day of samples for every device; (devices, rows, bytes of table and indexes)."""
    db = Database(url)
    try:
        typed = DeviceReport.model_validate_json(json.dumps(report()))
        async with db.read() as session:
            ids = list(await session.scalars(select(Device.id)))
        start = utcnow() - timedelta(days=1)
        rows = 0
        for device_id in ids:
            async with db.write() as tx:
                for i in range(SAMPLES_PER_DAY):
                    tx.session.add(sample_of(typed, device_id, start + timedelta(seconds=60 * i)))
            rows += SAMPLES_PER_DAY
        async with db.read() as session:
            if db.is_sqlite:
                size = await session.scalar(
                    text("SELECT sum(pgsize) FROM dbstat WHERE name LIKE '%report_history%'")
                )
            else:
                size = await session.scalar(text("SELECT pg_total_relation_size('report_history')"))
            total = int(await session.scalar(select(func.count(ReportSample.id))) or 0)
        return len(ids), total, int(size or 0)
    finally:
        await db.close()


def run(args: argparse.Namespace, workdir: Path) -> int:
    if bool(args.database) != bool(args.database_off):
        print("give both --database and --database-off (two empty databases), or neither", file=sys.stderr)
        return 2
    deadline = time.monotonic() + args.time_limit
    sides = {
        "history on (60 s, 7 days)": LocalController(workdir / "on", database=args.database, extra_env={}),
        "history off": LocalController(
            workdir / "off", database=args.database_off, extra_env={"ZEROGATE_REPORT_HISTORY_DAYS": "0"}
        ),
    }
    timings: dict[tuple[str, str], list[float]] = {}
    devices: dict[str, list[ControllerClient]] = {}
    body = report()
    try:
        for name, lc in sides.items():
            lc.init().start()
            admin = lc.bootstrap_admin().client
            devices[name] = enroll(lc.url, admin, lc.ca_pem, args.devices)
            for c in devices[name]:
                c.get("/v1/health")  # connect outside the timing
        for r in range(args.rounds):
            if time.monotonic() > deadline:
                break
            phase = "first report (writes a sample)" if r == 0 else "report within the interval"
            for i in range(args.devices):
                # device i on one side, then on the other, who goes first alternating
                for name in list(sides)[:: 1 if (r + i) % 2 else -1]:
                    started = time.perf_counter()
                    devices[name][i].post("/v1/report", body)
                    timings.setdefault((name, phase), []).append(time.perf_counter() - started)
        for clients in devices.values():
            for c in clients:
                c.close()
        on = sides["history on (60 s, 7 days)"]
        on.stop()
        url = on.database or f"sqlite:///{on.data_dir / 'zerogate.db'}"
        n, rows, size = asyncio.run(day_of_samples(url))
    finally:
        for lc in sides.values():
            lc.stop()

    backend = "PostgreSQL" if args.database else "SQLite"
    print(f"report POST with and without history, {backend}, {args.devices} devices")
    print(f"{'controller':<28}  {'phase':<32}  {'n':>5}  {'p50 ms':>7}  {'p90 ms':>7}  {'p50 ratio':>9}")
    for phase in ("first report (writes a sample)", "report within the interval"):
        base = timings.get(("history off", phase))
        for name in sides:
            samples = timings.get((name, phase))
            if not samples or not base:
                continue
            ratio = percentile(samples, 50) / percentile(base, 50)
            print(
                f"{name:<28}  {phase:<32}  {len(samples):>5}  {percentile(samples, 50) * 1e3:>7.2f}"
                f"  {percentile(samples, 90) * 1e3:>7.2f}  {ratio:>8.2f}x"
            )
    per_device = size / max(1, n)
    print(
        f"storage: {rows} samples for {n} devices (a day at 60 s each): {size / 1e6:.1f} MB, "
        f"{size / max(1, rows):.0f} bytes/sample with indexes, {per_device / 1e3:.0f} kB per device per day, "
        f"{7 * per_device / 1e6:.2f} MB per device for 7 days"
    )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument(
        "--rounds", type=int, default=12, help="reports per device (the first writes a sample)"
    )
    parser.add_argument(
        "--database-off", default="", help="a second empty database, for the history-off side"
    )
    add_controller_options(parser, time_limit=300)
    args = parser.parse_args()
    return run_in_scratch_dir("zg-bench-history-", lambda workdir: run(args, workdir))


if __name__ == "__main__":
    sys.exit(main())
