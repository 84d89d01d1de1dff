"""Benchmark: a revision bump on one controller -> a watcher on another controller
wakes, with LISTEN/NOTIFY versus the old 0.25 s poll, in the same run.

Run: .venv/bin/python bench/ha_propagation.py [--changes N]
     [--database postgresql://USER@HOST:PORT/DB] [--time-limit S]

Without --database a private PostgreSQL server is started (tests/pgserver.py)
and removed afterwards; with it, give an empty database. Three "controllers"
share the database, each with its own engine (connection pool), in this one
process: a writer, one whose ``RevisionWatch`` LISTENs (the new behaviour,
safety-net poll every 5 s), and one that only polls every 0.25 s
(``listen=False``, the old behaviour). For each of --changes writes (each one
``Database.write`` transaction that bumps the revision) we measure write start
-> each watcher's ``wait_past`` returns the new revision. Baseline from the
same run: the write transaction alone (start -> commit returned), the floor
any propagation must include. Writes are spaced by a random pause so they do
not line up with the poll period.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from _common import add_controller_options, percentile, unwind_on_sigterm

from zerogate.controller.state import RevisionWatch
from zerogate.store.db import Database, upgrade_schema
from zerogate.store.models import DeploymentState

POLL_OLD = 0.25  # the poll period RevisionWatch used before LISTEN/NOTIFY


async def measure(url: str, changes: int, time_limit: float) -> dict[str, list[float]]:
    writer, listening_db, polling_db = Database(url), Database(url), Database(url)
    async with writer.sessions() as session, session.begin():
        session.add(DeploymentState(id=1, revision=1, created_at=datetime.now(UTC)))
    listening = RevisionWatch(listening_db)  # the default: LISTEN + 5 s safety poll
    polling = RevisionWatch(polling_db, poll=POLL_OLD, listen=False)
    await listening.start()
    await polling.start()
    samples: dict[str, list[float]] = {"write": [], "notify": [], "poll": []}
    try:
        for _ in range(1000):  # LISTEN is up within a few ms; give it 10 s
            if listening.listening:
                break
            await asyncio.sleep(0.01)
        else:
            raise RuntimeError("the revision listener did not connect within 10 s")
        deadline = time.monotonic() + time_limit
        for _ in range(changes):
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(random.uniform(0.05, 0.3))
            rev = listening.current
            done: dict[str, float] = {}

            async def wait(
                name: str, watch: RevisionWatch, rev: int = rev, done: dict[str, float] = done
            ) -> None:
                await watch.wait_past(rev, 10)
                done[name] = time.monotonic()

            waits = [
                asyncio.create_task(wait("notify", listening)),
                asyncio.create_task(wait("poll", polling)),
            ]
            await asyncio.sleep(0.01)  # both parked
            started = time.monotonic()
            async with writer.write() as tx:
                tx.bump()
            samples["write"].append(time.monotonic() - started)
            await asyncio.gather(*waits)
            for name in ("notify", "poll"):
                samples[name].append(done[name] - started)
    finally:
        await listening.stop()
        await polling.stop()
        for db in (writer, listening_db, polling_db):
            await db.close()
    return samples


def table(samples: dict[str, list[float]]) -> None:
    rows = [
        ("write alone (baseline)", samples["write"]),
        ("other controller, LISTEN/NOTIFY", samples["notify"]),
        (f"other controller, poll {POLL_OLD:g} s (old)", samples["poll"]),
    ]
    print(f"\nrevision propagation between controllers on one PostgreSQL, n={len(samples['write'])}")
    print(f"{'path':<38} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8} {'mean ms':>8}")
    for name, xs in rows:
        ms = [x * 1000 for x in xs]
        print(
            f"{name:<38} {percentile(ms, 50):8.1f} {percentile(ms, 90):8.1f} "
            f"{percentile(ms, 99):8.1f} {max(ms):8.1f} {statistics.fmean(ms):8.1f}"
        )


def run(url: str, changes: int, time_limit: float) -> int:
    upgrade_schema(url)
    samples = asyncio.run(measure(url, changes, time_limit))
    if not samples["write"]:
        print("no change measured", file=sys.stderr)
        return 1
    table(samples)
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=100, help="revision bumps to measure (default 100)")
    add_controller_options(parser, time_limit=60.0)
    args = parser.parse_args(argv)
    if args.changes < 1:
        parser.error("--changes must be at least 1")
    if args.database:
        if not args.database.startswith(("postgresql://", "postgres://")):
            parser.error("--database must be a postgresql:// URL")
        return run(args.database, args.changes, args.time_limit)
    unwind_on_sigterm()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from pgserver import PostgresServer

    try:
        with PostgresServer() as server:
            url = server.create_database("zpg_ha_propagation")
            return run(url, args.changes, args.time_limit)
    except KeyboardInterrupt:
        print("interrupted; PostgreSQL stopped and its files removed", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
