"""Benchmark: config change propagation, admin write -> a watching device sees it.

Run: .venv/bin/python bench/controller_propagation.py [--changes N]
     [--database postgresql://USER@HOST:PORT/DB] [--time-limit S]

Starts a real controller on 127.0.0.1 (throwaway directory, SQLite by
default), enrolls one connector and starts a watcher thread that long-polls
``GET /v1/snapshot?after=REV&wait=10`` with the connector's credential, the
way a connector or gateway watches its config. The admin then makes --changes
config-affecting writes (PATCH a connector group's description; each bumps the
revision by one). For each write we measure write start -> the watcher holds a
snapshot at a revision >= the one that write produced (read from
``GET /v1/health`` once the watcher has seen something new, so the health
request does not compete with the watch).

Baselines from the same run and the same controller, all over kept-alive
HTTPS connections: ``GET /v1/health`` (the floor of any round trip), the PATCH
alone, and a one-shot ``GET /v1/snapshot`` (what the watcher's answer costs to
build and transfer). Writes are strictly sequential; the watcher may or may
not be parked in its long-poll when a write starts (it re-arms right after
each answer), which is how a real watcher behaves too.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from _common import add_controller_options, percentile, run_in_scratch_dir

from zerogate.netops.controller_api import ControllerClient, ControllerError
from zerogate.pki.ca import create_csr, generate_private_key
from zerogate.pki.wireguard import generate_keypair
from zerogate.testbed.localrun import LocalController

GROUP = "bench-propagation"
WATCH_WAIT = 10  # seconds the server may hold one long-poll
WARMUP = 10


@dataclass
class Watcher:
    """Long-polls the snapshot in its own thread and timestamps every new revision."""

    controller: LocalController
    credential: str
    revision: int
    observed: list[tuple[int, float]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    polls: int = 0
    empty_polls: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    changed: threading.Condition = field(default_factory=threading.Condition)
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="snapshot-watcher", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        client = self.controller.client(self.credential)
        try:
            while not self.stop.is_set():
                self.polls += 1
                try:
                    r = client.request(
                        "GET",
                        "/v1/snapshot",
                        params={"after": self.revision, "wait": WATCH_WAIT},
                        timeout=WATCH_WAIT + 5,
                    )
                except ControllerError as exc:
                    if not self.stop.is_set():
                        self.errors.append(f"{type(exc).__name__}: {exc}")
                    return
                seen = time.perf_counter()
                if r.status_code == 204:
                    self.empty_polls += 1
                    continue
                revision = int(r.headers["X-Zerogate-Revision"])
                with self.changed:
                    if revision > self.revision:
                        self.revision = revision
                        self.observed.append((revision, seen))
                    self.changed.notify_all()
        finally:
            client.close()
            with self.changed:
                self.changed.notify_all()

    def wait_past(self, revision: int, deadline: float) -> bool:
        with self.changed:
            return (
                self.changed.wait_for(
                    lambda: self.revision > revision or not self.alive(),
                    timeout=max(0.0, deadline - time.monotonic()),
                )
                and self.revision > revision
            )

    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def first_at_or_after(self, revision: int) -> float | None:
        with self.changed:
            return next((t for rev, t in self.observed if rev >= revision), None)

    def close(self) -> None:
        self.stop.set()
        if self.thread is not None:
            # The thread is parked in a long-poll for at most WATCH_WAIT s; it is
            # a daemon, and the controller stopping ends its request anyway.
            self.thread.join(timeout=1)


def enroll_connector(controller: LocalController, admin: ControllerClient) -> str:
    key = admin.post(f"/v1/connector-groups/{GROUP}/provisioning-keys", {"max_uses": 1})["key"]
    key_pem = generate_private_key()
    _, wg_public = generate_keypair()
    with controller.client() as c:
        r = c.post(
            "/v1/enroll",
            {
                "key": key,
                "name": "bench-watcher",
                "csr": create_csr(key_pem, "bench-watcher").decode(),
                "wg_public_key": wg_public,
            },
        )
    return str(r["credential"])


def timed(samples: list[float], fn: object, count: int, deadline: float) -> None:
    assert callable(fn)
    for _ in range(count):
        if time.monotonic() > deadline:
            return
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)


def run(args: argparse.Namespace, workdir: Path) -> int:
    deadline = time.monotonic() + args.time_limit
    controller = LocalController(workdir / "data", database=args.database or "")
    watcher: Watcher | None = None
    try:
        controller.init().start()
        admin = controller.bootstrap_admin().client
        admin.post("/v1/connector-groups", {"name": GROUP, "subnets": ["10.250.0.0/24"]})
        credential = enroll_connector(controller, admin)
        device = controller.client(credential)

        health: list[float] = []
        snapshot: list[float] = []
        for _ in range(WARMUP):
            admin.get("/v1/health")
            device.get("/v1/snapshot")
        timed(health, lambda: admin.get("/v1/health"), args.changes, deadline)
        timed(snapshot, lambda: device.get("/v1/snapshot"), args.changes, deadline)
        device.close()

        start_revision = int(admin.get("/v1/health")["revision"])
        watcher = Watcher(controller, credential, revision=-1)
        watcher.start()
        if not watcher.wait_past(start_revision - 1, deadline):
            raise RuntimeError(f"the watcher never received its first snapshot: {watcher.errors}")

        write: list[float] = []
        propagation: list[float] = []
        after_reply: list[float] = []
        revision_steps: set[int] = set()
        previous = start_revision
        for i in range(args.changes):
            if time.monotonic() > deadline:
                break
            started = time.perf_counter()
            admin.patch(f"/v1/connector-groups/{GROUP}", {"description": f"bench change {i:05d}"})
            replied = time.perf_counter()
            write.append(replied - started)
            # Wait for the watcher to see anything new, then learn which revision
            # the write produced; keep waiting if the watcher is behind it.
            change_deadline = min(deadline, time.monotonic() + WATCH_WAIT + 5)
            if not watcher.wait_past(previous, change_deadline):
                raise RuntimeError(f"change {i} did not reach the watcher in time: {watcher.errors}")
            produced = int(admin.get("/v1/health")["revision"])
            if not watcher.wait_past(produced - 1, change_deadline):
                raise RuntimeError(f"revision {produced} did not reach the watcher: {watcher.errors}")
            seen = watcher.first_at_or_after(produced)
            assert seen is not None
            propagation.append(seen - started)
            after_reply.append(seen - replied)
            revision_steps.add(produced - previous)
            previous = produced
        watcher.close()
        admin.close()
        if watcher.errors:
            raise RuntimeError(f"watcher failed: {watcher.errors}")
        if not propagation:
            raise RuntimeError("--time-limit ran out before the first change")
    finally:
        if watcher is not None:
            watcher.close()
        controller.stop()

    backend = "PostgreSQL" if args.database else "SQLite"
    floor = statistics.median(health)
    rows = [
        ("GET /v1/health (baseline)", health),
        ("GET /v1/snapshot, one-shot (connector)", snapshot),
        ("PATCH connector group (the write alone)", write),
        ("write start -> watcher has revision", propagation),
        ("write reply -> watcher has revision", after_reply),
    ]
    title = f"change propagation, {backend}, {len(propagation)} changes"
    width = max(len(title), *(len(name) for name, _ in rows))
    print(f"{title:<{width}}  {'n':>4}  {'p50 ms':>8}  {'p99 ms':>8}  {'max ms':>8}  {'p50/health':>10}")
    print(f"{'-' * width}  {'-' * 4}  {'-' * 8}  {'-' * 8}  {'-' * 8}  {'-' * 10}")
    for name, samples in rows:
        p50 = percentile(samples, 50)
        print(
            f"{name:<{width}}  {len(samples):>4}  {p50 * 1e3:>8.2f}  {percentile(samples, 99) * 1e3:>8.2f}"
            f"  {max(samples) * 1e3:>8.2f}  {p50 / floor:>9.1f}x"
        )
    steps = ", ".join(str(s) for s in sorted(revision_steps))
    print(
        f"(revision step per write: {steps}; watcher polls {watcher.polls}, "
        f"of which empty (204) {watcher.empty_polls}; percentiles are nearest-rank)"
    )
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=200, help="config writes to measure (default 200)")
    add_controller_options(parser, time_limit=180.0)
    args = parser.parse_args(argv)
    if args.changes < 1:
        parser.error("--changes must be at least 1")
    return run_in_scratch_dir("zg-bench-propagation-", lambda tmp: run(args, tmp))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
