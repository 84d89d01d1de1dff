"""Benchmark: connector enrollment round trip, as seen by the enrolling host.

Run: .venv/bin/python bench/enrollment_roundtrip.py [--enrollments N]
     [--database postgresql://USER@HOST:PORT/DB] [--time-limit S]

Starts a real controller on 127.0.0.1 (throwaway directory, SQLite by
default), creates one connector group and one provisioning key with
``max_uses`` = 2 N, and enrolls N connectors exactly the way
``zerogate connector enroll`` does (``zerogate.cli.device.enroll_device``,
minus writing the state directory): parse the install string, ``fetch_ca``
(pinned first contact), generate the device key, WireGuard key pair and CSR,
then ``POST /v1/enroll`` on a new pinned connection. Each step is timed
separately on the client.

Baselines from the same run: key generation alone and the POST alone (both
already inside the round trip), ``GET /v1/health`` on a kept-alive connection
(the floor of any round trip), and N more enrollments whose POST reuses one
kept-alive connection (so the difference is the TLS handshake).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from _common import add_controller_options, percentile, run_in_scratch_dir

from zerogate.netops.controller_api import ControllerClient, fetch_ca
from zerogate.pki.ca import create_csr, generate_private_key
from zerogate.pki.install_string import parse_install_string
from zerogate.pki.wireguard import generate_keypair
from zerogate.testbed.localrun import LocalController

GROUP = "bench-enrollment"
WARMUP = 5


def make_device_keys(name: str) -> tuple[str, str]:
    """What the enrolling host generates: (CSR PEM, WireGuard public key)."""
    key_pem = generate_private_key()
    _, wg_public = generate_keypair()
    return create_csr(key_pem, name).decode(), wg_public


def enroll_body(key: str, name: str, csr: str, wg_public: str) -> dict[str, str]:
    return {"key": key, "name": name, "csr": csr, "wg_public_key": wg_public}


def run(args: argparse.Namespace, workdir: Path) -> int:
    n = args.enrollments
    deadline = time.monotonic() + args.time_limit
    controller = LocalController(workdir / "data", database=args.database or "")
    timings: dict[str, list[float]] = {
        k: [] for k in ("health", "fetch_ca", "keygen", "post", "total", "post_keepalive")
    }
    try:
        controller.init().start()
        admin = controller.bootstrap_admin().client
        admin.post("/v1/connector-groups", {"name": GROUP, "subnets": ["10.251.0.0/24"]})
        created = admin.post(f"/v1/connector-groups/{GROUP}/provisioning-keys", {"max_uses": 2 * n + WARMUP})
        install = created["install_string"]

        for _ in range(WARMUP):
            admin.get("/v1/health")
        for _ in range(n):
            if time.monotonic() > deadline:
                break
            started = time.perf_counter()
            admin.get("/v1/health")
            timings["health"].append(time.perf_counter() - started)

        # The round trip, as enroll_device does it (a new connection per step).
        for i in range(n):
            if time.monotonic() > deadline:
                break
            name = f"bench-c{i:05d}"
            t0 = time.perf_counter()
            info = parse_install_string(install)
            ca_pem = fetch_ca(info.controller_url, info.ca_pin)
            t1 = time.perf_counter()
            csr, wg_public = make_device_keys(name)
            t2 = time.perf_counter()
            with ControllerClient(info.controller_url, ca_pem) as c:
                c.post("/v1/enroll", enroll_body(info.key, name, csr, wg_public))
            t3 = time.perf_counter()
            timings["fetch_ca"].append(t1 - t0)
            timings["keygen"].append(t2 - t1)
            timings["post"].append(t3 - t2)
            timings["total"].append(t3 - t0)

        # The POST alone over one kept-alive connection; keys made outside the timing.
        key = parse_install_string(install).key
        with controller.client() as c:
            c.get("/v1/health")
            for i in range(n):
                if time.monotonic() > deadline:
                    break
                name = f"bench-k{i:05d}"
                csr, wg_public = make_device_keys(name)
                started = time.perf_counter()
                c.post("/v1/enroll", enroll_body(key, name, csr, wg_public))
                timings["post_keepalive"].append(time.perf_counter() - started)
        admin.close()
    finally:
        controller.stop()

    if not timings["total"]:
        raise RuntimeError("--time-limit ran out before the first enrollment")
    backend = "PostgreSQL" if args.database else "SQLite"
    floor = percentile(timings["health"], 50)
    total_p50 = percentile(timings["total"], 50)
    rows = [
        ("GET /v1/health, kept-alive (baseline)", "health"),
        ("key generation alone (EC P-256 + CSR + X25519)", "keygen"),
        ("fetch_ca (pinned first contact, 2 connections)", "fetch_ca"),
        ("POST /v1/enroll, new connection", "post"),
        ("POST /v1/enroll, kept-alive connection", "post_keepalive"),
        ("round trip = fetch_ca + keygen + POST (new conn.)", "total"),
    ]
    title = f"enrollment round trip, {backend}, {len(timings['total'])} enrollments"
    width = max(len(title), *(len(name) for name, _ in rows))
    print(
        f"{title:<{width}}  {'n':>4}  {'p50 ms':>8}  {'p99 ms':>8}  {'max ms':>8}"
        f"  {'p50/health':>10}  {'% of trip':>9}"
    )
    print(f"{'-' * width}  {'-' * 4}  {'-' * 8}  {'-' * 8}  {'-' * 8}  {'-' * 10}  {'-' * 9}")
    for name, k in rows:
        samples = timings[k]
        if not samples:
            continue
        p50 = percentile(samples, 50)
        share = f"{p50 / total_p50 * 100:>8.0f}%" if k in ("fetch_ca", "keygen", "post") else f"{'':>9}"
        print(
            f"{name:<{width}}  {len(samples):>4}  {percentile(samples, 50) * 1e3:>8.2f}"
            f"  {percentile(samples, 99) * 1e3:>8.2f}  {max(samples) * 1e3:>8.2f}"
            f"  {p50 / floor:>9.1f}x  {share}"
        )
    post = timings["post"]
    tenth = max(1, len(post) // 10)
    print(
        f"(POST p50 first {tenth} vs last {tenth} enrollments: "
        f"{statistics.median(post[:tenth]) * 1e3:.2f} vs {statistics.median(post[-tenth:]) * 1e3:.2f} ms; "
        "percentiles are nearest-rank)"
    )
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--enrollments", type=int, default=100, help="enrollments to measure (default 100)")
    add_controller_options(parser, time_limit=180.0)
    args = parser.parse_args(argv)
    if not 1 <= args.enrollments <= 4000:
        parser.error("--enrollments must be between 1 and 4000 (a key allows at most 10000 uses)")
    return run_in_scratch_dir("zg-bench-enrollment-", lambda tmp: run(args, tmp))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
