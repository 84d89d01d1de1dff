"""Benchmark: commit-confirmed segment enforcement on N real SSH hosts.

Run (as root): .venv/bin/python bench/segment_enforce.py [--hosts 10,100] [--concurrency 16]
               [--sequential-max 100]

Needs root (network namespaces), sshd, ssh, nft and setsid. For each N in
``--hosts`` a fleet of N namespaces is built (:class:`zerogate.testbed.sshhosts.SshFleet`:
one real sshd and real nftables each, all names prefixed ``zgsh<hex>`` and removed
however the run ends, Ctrl-C and SIGTERM included). Every host then gets the same
kind of table: the management allow-list plus 10 approved rules, in mode protected.

Rows per N:

- ``enforce``: :func:`zerogate.segment.hosts.enforce` on every host, ``--concurrency``
  at a time (snapshot, rollback armed on the host, load, fresh-login check, disarm);
- ``baseline seq``: the same table loaded with a plain ``ssh host nft -f -`` (host key
  pinned, no snapshot, no rollback, no check), one host after another, on at most
  ``--sequential-max`` hosts (its total is then projected to N, marked ``~``);
- ``baseline par``: the same plain loop at the same concurrency.

Columns: total seconds, per-host p50/p99, the server side's peak RSS (this process plus
its ``ssh`` clients, ControlMaster processes included), the peak number of ``ssh``
client processes alive at once, ``ssh`` runs per host, and failures. The defaults take
two to three minutes; ``--hosts 10,100,500,1000`` is the full scale run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from _common import percentile, unwind_on_sigterm

from dataplane import print_table
from zerogate.deploy.firewall import ssh as fw_ssh
from zerogate.deploy.firewall.ssh import ssh_argv
from zerogate.netops.command import run
from zerogate.netops.command import run as run_command
from zerogate.segment import checks as seg_checks
from zerogate.segment import hosts
from zerogate.segment import ssh as seg_ssh
from zerogate.segment.plan import render_asset_table
from zerogate.segment.ssh import Access
from zerogate.testbed.sshhosts import MAX_PORTS, SERVER_ADDRESS, SshFleet, SshHost

RULES = 10
SAMPLE_EVERY = 0.1  # seconds between RSS / session samples
HOST_TIMEOUT = 120.0  # one host's enforcement giving up


# --------------------------------------------------------------------------- measuring


@dataclass
class ServerSampler:
    """Samples, in a thread, the RSS of this process plus every ``ssh`` client that uses
    ``marker`` (the fleet's private key path) and how many such clients run at once."""

    marker: bytes
    peak_rss_kb: int = 0
    peak_ssh: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _sample(self) -> None:
        rss, count = _rss_kb(os.getpid()), 0
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                    cmdline = f.read()
            except OSError:
                continue
            if cmdline.startswith(b"ssh\0") and self.marker in cmdline:
                count += 1
                rss += _rss_kb(int(entry.name))
        self.peak_rss_kb = max(self.peak_rss_kb, rss)
        self.peak_ssh = max(self.peak_ssh, count)

    def _loop(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY):
            self._sample()

    def __enter__(self) -> ServerSampler:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


class SshCounter:
    """Counts the ``ssh`` client runs the segment code and the baseline start (all through
    :func:`zerogate.netops.command.run`, imported by these modules)."""

    modules: tuple[Any, ...] = (fw_ssh, seg_checks, seg_ssh, sys.modules[__name__])

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()
        self._saved: list[tuple[Any, Any]] = []

    def __enter__(self) -> SshCounter:
        def counting(argv: Sequence[str], *args: Any, **kwargs: Any) -> Any:
            if argv and argv[0] == "ssh":
                with self._lock:
                    self.count += 1
            return run_command(argv, *args, **kwargs)

        for module in self.modules:
            self._saved.append((module, module.run))
            module.run = counting
        return self

    def __exit__(self, *exc: object) -> None:
        for module, original in self._saved:
            module.run = original


@dataclass
class Row:
    what: str
    hosts: int
    concurrency: int
    total: float
    durations: list[float]
    rss_kb: int
    peak_ssh: int
    ssh_runs: int
    failures: list[str]
    projected: bool = False

    def cells(self) -> list[str]:
        ok = self.durations or [0.0]
        total = f"~{self.total:.1f}" if self.projected else f"{self.total:.1f}"
        per_host = self.ssh_runs / max(1, len(self.durations) + len(self.failures))
        return [self.what, str(self.hosts), str(self.concurrency), total, f"{percentile(ok, 50):.2f}",
                f"{percentile(ok, 99):.2f}", f"{self.rss_kb / 1024:.0f}", str(self.peak_ssh),
                f"{per_host:.1f}", str(len(self.failures))]  # fmt: skip


def measure(
    what: str, fleet: SshFleet, hosts_: Sequence[SshHost], concurrency: int, job: Callable[[SshHost], None]
) -> Row:
    """Run ``job`` on every host in the server namespace, ``concurrency`` at a time."""
    durations: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()

    def one(host: SshHost) -> None:
        start = time.monotonic()
        try:
            job(host)
        except Exception as exc:  # a failed host is a row entry, not the end of the run
            with lock:
                failures.append(f"{host.ns}: {type(exc).__name__}: {str(exc)[:200]}")
            return
        with lock:
            durations.append(time.monotonic() - start)

    def all_hosts() -> float:
        start = time.monotonic()
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            list(pool.map(one, hosts_))
        return time.monotonic() - start

    with ServerSampler(str(fleet.key).encode()) as sampler, SshCounter() as counter:
        total = fleet.call(all_hosts, timeout=HOST_TIMEOUT * max(1, len(hosts_)))
    return Row(what, len(hosts_), concurrency, total, durations, sampler.peak_rss_kb, sampler.peak_ssh,
               counter.count, failures)  # fmt: skip


# --------------------------------------------------------------------------- the work


def protected_asset(host: SshHost, revision: int) -> Any:
    rules = [
        {"rule_id": i + 1, "action": "accept", "protocol": "tcp" if i % 3 else "udp",
         "port_first": 8000 + 10 * i, "port_last": 8000 + 10 * i + (i % 2),
         "sources": [f"10.{20 + i}.0.0/16", f"192.168.{i}.0/24"]}
        for i in range(RULES)
    ]  # fmt: skip
    return host.asset(mode="protected", rules_revision=revision, rules=rules)


def plain_load(fleet: SshFleet, revision: int) -> Callable[[SshHost], None]:
    """The baseline: ``ssh host nft -f -`` with the same table, host key pinned, nothing else."""
    known = fleet.tmp / "baseline-known-hosts"
    known.write_text("".join(f"{h.address} {h.host_key}\n" for h in fleet.hosts))
    address = fw_ssh.SshAddress("root", "", 22, "")

    def job(host: SshHost) -> None:
        text = render_asset_table(protected_asset(host, revision), [SERVER_ADDRESS], [22])
        argv = ssh_argv(
            fw_ssh.SshAddress(address.user, str(host.address), 22, ""), known, fleet.key, ["nft", "-f", "-"]
        )
        r = run(argv, input=text, timeout=HOST_TIMEOUT, check=False)
        if r.returncode != 0:
            raise RuntimeError(r.stderr.strip()[-200:])

    return job


def enforcing(fleet: SshFleet, state: Path, revision: int) -> Callable[[SshHost], None]:
    def job(host: SshHost) -> None:
        # The hosts share this machine's file system: each gets a directory of its own, as
        # each real host has its own /var/lib/zerogate/segment.
        access = Access(fleet.key, state, remote_dir=str(host.base / "zerogate-segment"))
        result = hosts.enforce(protected_asset(host, revision), access, [SERVER_ADDRESS], ssh_ports=[22],
                               listeners=[])  # fmt: skip
        if result.outcome != "applied":
            raise RuntimeError(f"outcome {result.outcome}: {result.detail}")

    return job


def bench_fleet(count: int, concurrency: int, sequential_max: int, tmp: Path) -> tuple[list[Row], list[str]]:
    notes: list[str] = []
    rows: list[Row] = []
    started = time.monotonic()
    with SshFleet(count, tmp / f"fleet{count}", clients=0, parallel=max(16, concurrency)) as fleet:
        notes.append(f"N={count}: fleet of {count} sshd hosts built in {time.monotonic() - started:.1f} s")
        seq_hosts = fleet.hosts[: max(1, min(count, sequential_max))]
        seq = measure("baseline seq", fleet, seq_hosts, 1, plain_load(fleet, 1))
        if len(seq_hosts) < count and seq.durations:
            seq.total = seq.total * count / len(seq_hosts)
            seq.hosts, seq.projected = count, True
        rows.append(seq)
        rows.append(measure("baseline par", fleet, fleet.hosts, concurrency, plain_load(fleet, 1)))
        rows.append(
            measure("enforce", fleet, fleet.hosts, concurrency, enforcing(fleet, tmp / f"state{count}", 2))
        )
        for row in rows:
            notes += [f"N={count} {row.what}: {f}" for f in row.failures[:3]]
        bad = [h for h in fleet.hosts[:3] if "zerogate_segment" not in fleet.nft(h, "list", "tables").stdout]
        notes += [f"N={count}: no table on {h.ns} after enforce" for h in bad]
    return rows, notes


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", default="10,100", help="comma-separated fleet sizes (default 10,100)")
    parser.add_argument("--concurrency", type=int, default=16, help="hosts at a time (default 16)")
    parser.add_argument(
        "--sequential-max",
        type=int,
        default=100,
        help="hosts the sequential baseline runs on; its total is projected to N (default 100)",
    )
    args = parser.parse_args(argv)
    try:
        sizes = [int(n) for n in args.hosts.split(",") if n.strip()]
    except ValueError:
        parser.error(f"--hosts {args.hosts!r}: comma-separated integers, e.g. 10,100")
    if not sizes or any(not 1 <= n < MAX_PORTS for n in sizes):
        parser.error(f"--hosts: each size between 1 and {MAX_PORTS - 1}")
    if not 1 <= args.concurrency <= 256:
        parser.error("--concurrency: between 1 and 256")
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    unwind_on_sigterm()
    rows: list[Row] = []
    notes: list[str] = []
    try:
        with tempfile.TemporaryDirectory(prefix="zg-bench-segment-") as tmp:
            for count in sizes:
                got, more = bench_fleet(count, args.concurrency, args.sequential_max, Path(tmp))
                rows += got
                notes += more
                print(f"N={count} done", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print("interrupted; namespaces and temporary files removed", file=sys.stderr)
        return 130
    print(
        f"segment enforcement on real SSH hosts ({os.cpu_count()} CPUs, server {IPv4Address(SERVER_ADDRESS)})"
    )
    print_table(
        ["run", "N", "conc", "total s", "p50 s", "p99 s", "RSS MB", "max ssh", "ssh/host", "failed"],
        [r.cells() for r in rows],
    )
    for row in rows:
        if row.what == "enforce":
            base = next(b for b in rows if b.what == "baseline par" and b.hosts == row.hosts)
            notes.append(
                f"N={row.hosts}: enforce / plain parallel load = {row.total / max(base.total, 1e-9):.1f}x"
            )
    for note in notes:
        print(f"  - {note}")
    return 1 if any(r.failures for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
