"""Benchmark: group membership changes against group size (issue 8, defect 18).

Run: .venv/bin/python bench/group_membership.py [--members N] [--runs R]
     [--database postgresql://USER@HOST:PORT/DB] [--time-limit S]

Starts a real controller on 127.0.0.1 (throwaway directory, SQLite by
default) and creates 2 N users through the API. Then, over one kept-alive
connection, times R runs each of adding one user with
``PATCH /v1/groups/{name}/members`` to an empty group and to an N-member group
(each run removes the user again, untimed), and the same change through the
full-replacement ``PATCH /v1/groups/{name}`` with the whole member list (the
only way before; the same-run baseline). Last, a 2 N-member group made in one
request, by ``POST /v1/groups`` and by one ``PATCH .../members``.

O(change) means: adding to the N-member group costs about what adding to the
empty one does (ratio near 1x), while the full replacement grows with N.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import add_controller_options, percentile, run_in_scratch_dir

from zerogate.netops.controller_api import ControllerClient
from zerogate.testbed.localrun import LocalController


def timed(samples: list[float], call: Callable[..., Any], *args: Any) -> None:
    started = time.perf_counter()
    call(*args)
    samples.append(time.perf_counter() - started)


def run(args: argparse.Namespace, workdir: Path) -> int:
    n, runs = args.members, args.runs
    deadline = time.monotonic() + args.time_limit
    controller = LocalController(workdir / "data", database=args.database or "")
    timings: dict[str, list[float]] = {}
    setup = 0.0
    try:
        controller.init().start()
        admin: ControllerClient = controller.bootstrap_admin().client
        started = time.monotonic()
        users = [admin.post("/v1/users", {"username": f"bench-u{i:05d}"})["username"] for i in range(2 * n)]
        extras = [admin.post("/v1/users", {"username": f"bench-x{i:03d}"})["username"] for i in range(runs)]
        admin.post("/v1/groups", {"name": "empty"})
        admin.post("/v1/groups", {"name": "big", "members": users[:n]})
        admin.post("/v1/groups", {"name": "replaced-empty"})
        admin.post("/v1/groups", {"name": "replaced-big", "members": users[:n]})
        setup = time.monotonic() - started

        def add_one(group: str, key: str) -> None:
            samples = timings.setdefault(key, [])
            for user in extras:
                if time.monotonic() > deadline:
                    return
                timed(samples, admin.patch, f"/v1/groups/{group}/members", {"add": [user]})
                admin.patch(f"/v1/groups/{group}/members", {"remove": [user]})

        def replace_plus_one(group: str, base: list[str], key: str) -> None:
            samples = timings.setdefault(key, [])
            for user in extras:
                if time.monotonic() > deadline:
                    return
                timed(samples, admin.patch, f"/v1/groups/{group}", {"members": [*base, user]})
                admin.patch(f"/v1/groups/{group}", {"members": base})

        add_one("empty", "add_empty")
        add_one("big", "add_big")
        replace_plus_one("replaced-empty", [], "replace_empty")
        replace_plus_one("replaced-big", users[:n], "replace_big")
        for i in range(3):
            if time.monotonic() > deadline:
                break
            timed(
                timings.setdefault("create_2n", []),
                admin.post,
                "/v1/groups",
                {"name": f"whole-{i}", "members": users},
            )
            admin.post("/v1/groups", {"name": f"delta-{i}"})
            timed(
                timings.setdefault("delta_2n", []),
                admin.patch,
                f"/v1/groups/delta-{i}/members",
                {"add": users},
            )
        admin.close()
    finally:
        controller.stop()

    if not timings.get("add_empty") or not timings.get("add_big"):
        raise RuntimeError("--time-limit ran out before the first measurement")
    backend = "PostgreSQL" if args.database else "SQLite"
    floor = percentile(timings["add_empty"], 50)
    rows = [
        ("add 1 user to an empty group (PATCH .../members)", "add_empty"),
        (f"add 1 user to a {n}-member group (PATCH .../members)", "add_big"),
        ("baseline: full list + 1 to an empty group (PATCH)", "replace_empty"),
        (f"baseline: full list + 1 to a {n}-member group (PATCH)", "replace_big"),
        (f"create a {2 * n}-member group (POST /v1/groups)", "create_2n"),
        (f"add {2 * n} users to an empty group (PATCH .../members)", "delta_2n"),
    ]
    title = f"group membership, {backend}, {2 * n + runs} users (setup {setup:.0f} s)"
    width = max(len(title), *(len(name) for name, _ in rows))
    print(f"{title:<{width}}  {'n':>4}  {'p50 ms':>9}  {'p99 ms':>9}  {'max ms':>9}  {'p50/first':>9}")
    print(f"{'-' * width}  {'-' * 4}  {'-' * 9}  {'-' * 9}  {'-' * 9}  {'-' * 9}")
    for name, key in rows:
        samples = timings.get(key, [])
        if not samples:
            continue
        p50 = percentile(samples, 50)
        print(
            f"{name:<{width}}  {len(samples):>4}  {p50 * 1e3:>9.2f}  {percentile(samples, 99) * 1e3:>9.2f}"
            f"  {max(samples) * 1e3:>9.2f}  {p50 / floor:>8.1f}x"
        )
    big, empty = percentile(timings["add_big"], 50), floor
    print(
        f"(adding one member: {n}-member vs empty group {big / empty:.2f}x; "
        + (
            f"full replacement {percentile(timings['replace_big'], 50) / big:.1f}x the delta on the {n}-member group; "
            if timings.get("replace_big")
            else ""
        )
        + "percentiles are nearest-rank)"
    )
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=2500, help="members of the large group (default 2500)")
    parser.add_argument(
        "--runs", type=int, default=30, help="timed runs per single-member change (default 30)"
    )
    add_controller_options(parser, time_limit=300.0)
    args = parser.parse_args(argv)
    if not 1 <= args.members <= 10000 or not 1 <= args.runs <= 500:
        parser.error("--members must be 1..10000 and --runs 1..500")
    return run_in_scratch_dir("zg-bench-groups-", lambda tmp: run(args, tmp))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
