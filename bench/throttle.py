"""Benchmark: what sharing the sign-in throttle through the database costs.

Run: .venv/bin/python bench/throttle.py [--attempts N] [--rate PER_S] [--database postgresql://...]

In one run, three throttles side by side: in memory (no database), shared
through SQLite (a file in a temp dir) and shared through PostgreSQL (the URL
given, else a private server started like the tests' one). For each, two
throttles on one database play two controllers, and ``--attempts`` simulated
sign-ins (9 failures to 1 success, 250 sources, 50 accounts) go to the first at
``--rate`` per second, while both sync in the background on the same event
loop. Printed per backend:

- the throttle's own work in a sign-in (check + record), p50 and p99, in
  microseconds. Decisions are made from memory in every mode, so the database
  shows up only as event-loop stalls:
- loop lag: how much later than asked a 1 ms sleep wakes, p50 and p99 (the
  background writes and pulls delay everything else on the loop by that much);
- sharing lag (PostgreSQL only: SQLite has one controller): one failure on the
  first throttle until the second refuses the pair, p50 and max over 20 tries;
- rows left in ``throttle_failures`` and the time a restarted controller's
  throttle takes to load them.

For scale, the same run times one argon2 password check (every sign-in pays it).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

from _common import percentile, unwind_on_sigterm
from sqlalchemy import func, select

from dataplane import print_table
from zerogate.controller.auth import dummy_password_hash, password_matches
from zerogate.controller.throttle import Throttle, ThrottleLimits
from zerogate.store.db import Database, upgrade_schema
from zerogate.store.models_throttle import ThrottleFailure

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from pgserver import PostgresServer  # the tests' private server

LIMITS = ThrottleLimits(per_source=20, per_account=5, per_account_any_source=50, window=900, delay_unit=1)


async def run_backend(url: str | None, attempts: int, rate: float) -> list[str]:
    db = Database(url) if url else None
    first = Throttle(LIMITS, db=db)
    second = Throttle(ThrottleLimits(per_account=1, window=900, delay_unit=600), db=db)
    await first.start()
    await second.start()
    work: list[float] = []
    lag: list[float] = []
    try:
        for i in range(attempts):
            source, account = f"10.9.{i % 250}.{i // 250 % 250}", f"user{i % 50}"
            t0 = time.perf_counter()
            first.login_wait(account, source)
            if i % 10 == 9:
                first.login_succeeded(account, source)
            else:
                first.login_failed(account, source)
            work.append(time.perf_counter() - t0)
            asked = time.perf_counter()
            await asyncio.sleep(1 / rate)
            lag.append(time.perf_counter() - asked - 1 / rate)
        shares: list[float] = []
        if db is not None and not db.is_sqlite:  # SQLite: one controller, nothing to share
            for n in range(20):
                source, account = "10.8.0.1", f"lag{n}"
                t0 = time.perf_counter()
                first.login_failed(account, source)
                while second.login_wait(account, source) == 0:
                    await asyncio.sleep(0.0005)
                    if time.perf_counter() - t0 > 10:
                        raise RuntimeError("the second throttle never saw the failure")
                shares.append(time.perf_counter() - t0)
        if db is not None:
            await first.sync()
            async with db.read() as session:
                rows = (await session.execute(select(func.count()).select_from(ThrottleFailure))).scalar_one()
            # A restart: a new throttle loads the window before it serves.
            restarted = Throttle(LIMITS, db=db)
            t0 = time.perf_counter()
            await restarted.start()
            load = time.perf_counter() - t0
            await restarted.stop()
    finally:
        await first.stop()
        await second.stop()
        if db is not None:
            await db.close()
    us = 1e6
    return [
        f"{percentile(work, 50) * us:.1f}",
        f"{percentile(work, 99) * us:.1f}",
        f"{percentile(lag, 50) * 1e3:.2f}",
        f"{percentile(lag, 99) * 1e3:.2f}",
        f"{percentile(shares, 50) * 1e3:.0f}" if shares else "-",
        f"{max(shares) * 1e3:.0f}" if shares else "-",
        str(rows) if db is not None else "-",
        f"{load * 1e3:.0f}" if db is not None else "-",
    ]


def argon2_ms(rounds: int = 5) -> float:
    stored = dummy_password_hash()
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        password_matches(stored, "a guess")
        samples.append(time.perf_counter() - t0)
    return percentile(samples, 50) * 1e3


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--attempts", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=500.0, help="simulated sign-ins per second")
    parser.add_argument("--database", default="", help="postgresql://USER@HOST:PORT/DB of an empty database")
    args = parser.parse_args()
    unwind_on_sigterm()
    with ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="zth-bench-")))
        pg_url = args.database
        if not pg_url:
            server = stack.enter_context(PostgresServer())
            pg_url = server.create_database(f"zth_bench_{uuid.uuid4().hex[:8]}")
        sqlite_url = f"sqlite:///{scratch / 'zerogate.db'}"
        upgrade_schema(sqlite_url)
        upgrade_schema(pg_url)
        rows = []
        for name, url in (("memory", None), ("SQLite", sqlite_url), ("PostgreSQL", pg_url)):
            rows.append([name, *asyncio.run(run_backend(url, args.attempts, args.rate))])
    print(f"{args.attempts} simulated sign-ins at {args.rate:.0f}/s; argon2 check p50 {argon2_ms():.0f} ms")
    print_table(
        [
            "throttle",
            "work p50 us",
            "work p99 us",
            "loop lag p50 ms",
            "loop lag p99 ms",
            "sharing p50 ms",
            "sharing max ms",
            "rows",
            "load ms",
        ],
        rows,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
