"""Benchmark: commit-confirmed segment enforcement on N real SSH hosts.

Run (as root): .venv/bin/python bench/segment_enforce.py [--hosts 10,100] [--concurrency 16]
               [--sequential-max 100] [--kex default,curve25519-sha256]

Needs root (network namespaces), sshd, ssh, nft and setsid. For each N in
``--hosts`` a fleet of N namespaces is built (:class:`zerogate.testbed.sshhosts.SshFleet`:
one real sshd and real nftables each, all names prefixed ``zgsh<hex>`` and removed
however the run ends, Ctrl-C and SIGTERM included); its build time and memory are
printed. Every host then gets the same kind of table: the management allow-list plus
10 approved rules, in mode protected.

Rows per N:

- ``baseline seq``: the table loaded with a plain ``ssh host nft -f -`` (host key
  pinned, no snapshot, no rollback, no check), one host after another, on at most
  ``--sequential-max`` hosts (its total is then projected to N, marked ``~``);
- ``baseline par, kex K`` for each K in ``--kex``: the same plain loop at ``--concurrency``;
- ``enforce, kex K`` for each K in ``--kex``: :func:`zerogate.segment.hosts.enforce` on
  every host, ``--concurrency`` at a time (snapshot, rollback armed on the host, load,
  fresh-login check, disarm), its SSH connections with ``KexAlgorithms=K``
  (``default``: OpenSSH's own list).

Columns: total seconds, per-host p50/p99, CPU per host of the *server* side (this
process and every ``ssh`` it starts, ControlMaster processes included) and of the
*hosts* (every sshd and all it runs), the server side's peak RSS (summed), the peak
number of ``ssh`` clients alive at once, ``ssh`` runs and SSH logins (full handshakes,
from the sshd logs) per host, and failures. CPU comes from two cgroups the bench makes
and removes (``zg-bench-segment-<pid>-server`` / ``-hosts``). Server and hosts share
this machine's cores, so the wall times measure both; the notes project the server
alone on two dedicated cores from its measured CPU per host. The defaults take a few
minutes; ``--hosts 10,100,500,1000`` is the full scale run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import resource
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
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
KEX = re.compile(r"[+^-]?[a-z0-9][a-z0-9@.,-]*")  # as the segment settings' ssh_kex_algorithms


# --------------------------------------------------------------------------- measuring


class CpuGroups:
    """Two cgroups that account CPU (cgroup v1 ``cpuacct``, else v2 ``cpu.stat``): *server*
    holds this process and so every ``ssh`` it starts -- ControlMaster processes that
    daemonize included, since a process cannot fork its way out of its cgroup -- and
    *hosts* every sshd of the fleet with all they start (sessions, nft, armed rollbacks).
    On a machine without a writable cgroup file system ``usable`` is False and the
    CPU columns read ``-``. ``close`` moves this process back and removes both."""

    def __init__(self) -> None:
        self.usable = False
        self._made: list[Path] = []
        self._home: Path | None = None
        tag = f"zg-bench-segment-{os.getpid()}"
        v1 = Path("/sys/fs/cgroup/cpuacct")
        if (v1 / "cpuacct.usage").exists():
            self._root, self._v1, controller = v1, True, "cpuacct"
        elif Path("/sys/fs/cgroup/cgroup.controllers").exists():
            self._root, self._v1, controller = Path("/sys/fs/cgroup"), False, ""
        else:
            return
        try:
            self._home = self._root / _own_cgroup(controller).lstrip("/")
            self.server, self.hosts = self._root / f"{tag}-server", self._root / f"{tag}-hosts"
            for group in (self.server, self.hosts):
                group.mkdir()
                self._made.append(group)
            (self.server / "cgroup.procs").write_text(str(os.getpid()))
            self.usable = True
        except OSError as exc:
            print(f"no CPU accounting ({exc}); CPU columns read '-'", file=sys.stderr)
            self.close()

    def seconds(self, group: Path) -> float:
        if self._v1:
            return int((group / "cpuacct.usage").read_text()) / 1e9
        usage = next(
            ln for ln in (group / "cpu.stat").read_text().splitlines() if ln.startswith("usage_usec")
        )
        return int(usage.split()[1]) / 1e6

    def adopt(self, group: Path, pids: Sequence[int]) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):  # a host's sshd that already died
                (group / "cgroup.procs").write_text(str(pid))

    def pids(self, group: Path) -> list[int]:
        return [int(w) for w in (group / "cgroup.procs").read_text().split()]

    def close(self) -> None:
        if self._home is not None:
            with contextlib.suppress(OSError):
                (self._home / "cgroup.procs").write_text(str(os.getpid()))
        deadline = time.monotonic() + 10  # killed processes leave their cgroup once reaped
        for group in reversed(self._made):
            while True:
                try:
                    group.rmdir()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        print(f"cgroup {group} still in use; remove it with rmdir", file=sys.stderr)
                        break
                    time.sleep(0.05)  # polling interval, not a guess
        self._made.clear()
        self.usable = False


def _own_cgroup(controller: str) -> str:
    """This process's cgroup path in the hierarchy of ``controller`` ("": the v2 one)."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if (controller in controllers.split(",")) if controller else controllers == "":
            return path
    return "/"


@dataclass
class ServerSampler:
    """Samples, in a thread, the summed RSS of the server side (this process plus its ``ssh``
    clients, ControlMaster processes included) and how many ``ssh`` run at once. With
    :class:`CpuGroups` it reads the server cgroup's member list; without, it scans /proc for
    ``ssh`` processes whose command line holds ``marker`` (the fleet's key). ``cpu``: the
    sampler's own CPU seconds, which the server's CPU figure leaves out."""

    marker: bytes
    groups: CpuGroups
    peak_rss_kb: int = 0
    peak_ssh: int = 0
    cpu: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _candidates(self) -> list[int]:
        if self.groups.usable:
            return self.groups.pids(self.groups.server)
        return [int(e.name) for e in os.scandir("/proc") if e.name.isdigit()]

    def _sample(self) -> None:
        rss, count, me = 0, 0, os.getpid()
        for pid in self._candidates():
            if pid != me:
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        cmdline = f.read()
                except OSError:
                    continue
                if not (cmdline.startswith(b"ssh\0") and (self.groups.usable or self.marker in cmdline)):
                    continue
                count += 1
            rss += _rss_kb(pid)
        self.peak_rss_kb = max(self.peak_rss_kb, rss)
        self.peak_ssh = max(self.peak_ssh, count)

    def _loop(self) -> None:
        start = time.thread_time()
        while not self._stop.wait(SAMPLE_EVERY):
            self._sample()
        self.cpu = time.thread_time() - start

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
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE_KB
    except (OSError, ValueError, IndexError):
        return 0


def _self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def logins(hosts_: Sequence[SshHost]) -> int:
    """SSH logins (full handshakes) the hosts' sshd accepted so far, from their logs
    (multiplexed sessions over an existing connection log none)."""
    total = 0
    for host in hosts_:
        if host.sshd is not None:
            with contextlib.suppress(OSError):
                total += host.sshd.log.read_bytes().count(b"Accepted publickey")
    return total


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
    logins: int = 0
    server_cpu: float | None = None  # seconds, the whole row
    hosts_cpu: float | None = None
    python_cpu: float = 0.0  # of server_cpu: this process (the segment code), the rest is ssh
    projected: bool = False
    measured_hosts: int = 0  # the hosts really run (the sequential baseline may run fewer)

    def per_host(self, value: float) -> float:
        return value / max(1, self.measured_hosts or self.hosts)

    def cells(self) -> list[str]:
        ok = self.durations or [0.0]
        total = f"~{self.total:.1f}" if self.projected else f"{self.total:.1f}"
        cpu = [
            f"{self.per_host(c) * 1000:.0f}" if c is not None else "-"
            for c in (self.server_cpu, self.hosts_cpu)
        ]
        return [self.what, str(self.hosts), str(self.concurrency), total, f"{percentile(ok, 50):.2f}",
                f"{percentile(ok, 99):.2f}", *cpu, f"{self.rss_kb / 1024:.0f}", str(self.peak_ssh),
                f"{self.per_host(self.ssh_runs):.1f}", f"{self.per_host(self.logins):.1f}",
                str(len(self.failures))]  # fmt: skip


HEADERS = ["run", "N", "conc", "total s", "p50 s", "p99 s", "srv ms/host", "hosts ms/host", "RSS MB",
           "max ssh", "ssh/host", "logins/host", "failed"]  # fmt: skip


def measure(
    what: str,
    fleet: SshFleet,
    groups: CpuGroups,
    hosts_: Sequence[SshHost],
    concurrency: int,
    job: Callable[[SshHost], None],
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

    logged, python = logins(hosts_), _self_cpu()
    cpu = (groups.seconds(groups.server), groups.seconds(groups.hosts)) if groups.usable else None
    with ServerSampler(str(fleet.key).encode(), groups) as sampler, SshCounter() as counter:
        total = fleet.call(all_hosts, timeout=HOST_TIMEOUT * max(1, len(hosts_)))
    # Masters the jobs closed may log their end a moment later; their CPU is already spent.
    row = Row(what, len(hosts_), concurrency, total, durations, sampler.peak_rss_kb, sampler.peak_ssh,
              counter.count, failures, logins(hosts_) - logged, measured_hosts=len(hosts_))  # fmt: skip
    row.python_cpu = _self_cpu() - python - sampler.cpu
    if cpu is not None:
        row.server_cpu = groups.seconds(groups.server) - cpu[0] - sampler.cpu
        row.hosts_cpu = groups.seconds(groups.hosts) - cpu[1]
    return row


# --------------------------------------------------------------------------- the work


def protected_asset(host: SshHost, revision: int) -> Any:
    rules = [
        {"rule_id": i + 1, "action": "accept", "protocol": "tcp" if i % 3 else "udp",
         "port_first": 8000 + 10 * i, "port_last": 8000 + 10 * i + (i % 2),
         "sources": [f"10.{20 + i}.0.0/16", f"192.168.{i}.0/24"]}
        for i in range(RULES)
    ]  # fmt: skip
    return host.asset(mode="protected", rules_revision=revision, rules=rules)


def plain_load(fleet: SshFleet, revision: int, kex: str = "") -> Callable[[SshHost], None]:
    """The baseline: ``ssh host nft -f -`` with the same table, host key pinned, nothing else."""
    known = fleet.tmp / "baseline-known-hosts"
    known.write_text("".join(f"{h.address} {h.host_key}\n" for h in fleet.hosts))
    address = fw_ssh.SshAddress("root", "", 22, "")

    def job(host: SshHost) -> None:
        text = render_asset_table(protected_asset(host, revision), [SERVER_ADDRESS], [22])
        argv = ssh_argv(
            fw_ssh.SshAddress(address.user, str(host.address), 22, ""), known, fleet.key, ["nft", "-f", "-"]
        )
        if kex:
            argv[argv.index("--") : argv.index("--")] = ["-o", f"KexAlgorithms={kex}"]
        r = run(argv, input=text, timeout=HOST_TIMEOUT, check=False)
        if r.returncode != 0:
            raise RuntimeError(r.stderr.strip()[-200:])

    return job


def enforcing(fleet: SshFleet, state: Path, revision: int, kex: str) -> Callable[[SshHost], None]:
    def job(host: SshHost) -> None:
        # The hosts share this machine's file system: each gets a directory of its own, as
        # each real host has its own /var/lib/zerogate/segment.
        access = Access(fleet.key, state, remote_dir=str(host.base / "zerogate-segment"), kex_algorithms=kex)
        result = hosts.enforce(protected_asset(host, revision), access, [SERVER_ADDRESS], ssh_ports=[22],
                               listeners=[])  # fmt: skip
        if result.outcome != "applied":
            raise RuntimeError(f"outcome {result.outcome}: {result.detail}")

    return job


def mem_available_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return 0.0


def bench_fleet(
    count: int, concurrency: int, sequential_max: int, kexes: Sequence[str], tmp: Path, groups: CpuGroups
) -> tuple[list[Row], list[str]]:
    notes: list[str] = []
    rows: list[Row] = []
    started, free = time.monotonic(), mem_available_mb()
    with SshFleet(count, tmp / f"fleet{count}", clients=0, parallel=max(16, concurrency)) as fleet:
        notes.append(
            f"N={count}: fleet of {count} sshd hosts built in {time.monotonic() - started:.1f} s, "
            f"{free - mem_available_mb():.0f} MB of memory (MemAvailable before - after)"
        )
        if groups.usable:
            groups.adopt(groups.hosts, [h.sshd.process.pid for h in fleet.hosts if h.sshd is not None])
        seq_hosts = fleet.hosts[: max(1, min(count, sequential_max))]
        seq = measure("baseline seq", fleet, groups, seq_hosts, 1, plain_load(fleet, 1))
        if len(seq_hosts) < count and seq.durations:
            seq.total = seq.total * count / len(seq_hosts)
            seq.hosts, seq.projected = count, True
        rows.append(seq)
        for kex in kexes:
            plain = plain_load(fleet, 1, kex)
            rows.append(
                measure(
                    f"baseline par, kex {kex or 'default'}", fleet, groups, fleet.hosts, concurrency, plain
                )
            )
        for revision, kex in enumerate(kexes, start=2):
            job = enforcing(fleet, tmp / f"state{count}-{revision}", revision, kex)
            rows.append(
                measure(f"enforce, kex {kex or 'default'}", fleet, groups, fleet.hosts, concurrency, job)
            )
        for row in rows:
            notes += [f"N={count} {row.what}: {f}" for f in row.failures[:3]]
        bad = [h for h in fleet.hosts[:3] if "zerogate_segment" not in fleet.nft(h, "list", "tables").stdout]
        notes += [f"N={count}: no table on {h.ns} after enforce" for h in bad]
    notes.append(f"N={count}: fleet removed, {time.monotonic() - started:.1f} s after the start of its build")
    return rows, notes


def summary(rows: Sequence[Row]) -> list[str]:
    """Ratios against the parallel baseline and the projection from the server's own CPU."""
    notes = []
    if any(r.server_cpu is not None for r in rows):
        notes.append(
            "projection = 1,000 x the server CPU measured per host / 2 cores: the server alone on 2 "
            "dedicated cores (the hosts' sshd on their own machines), concurrency keeping both busy"
        )
    for row in rows:
        if row.server_cpu is not None and row.what != "baseline seq":
            per_host, python = row.per_host(row.server_cpu), row.per_host(row.python_cpu)
            notes.append(
                f"N={row.hosts} {row.what}: server CPU {per_host * 1000:.0f} ms/host (Python "
                f"{python * 1000:.0f}, ssh clients {(per_host - python) * 1000:.0f}); projection, server on "
                f"2 dedicated cores: ~{per_host * 1000 / 2:.0f} s for 1,000 hosts"
            )
        if row.what.startswith("enforce"):
            kex = row.what.split(", kex ", 1)[1]
            base = next(b for b in rows if b.what == f"baseline par, kex {kex}" and b.hosts == row.hosts)
            ratio = row.total / max(base.total, 1e-9)
            notes.append(f"N={row.hosts} {row.what}: total / plain parallel load, same kex = {ratio:.1f}x")
    return notes


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
    parser.add_argument(
        "--kex",
        default="default,curve25519-sha256",
        help="comma-separated KexAlgorithms, one enforce row each ('default': OpenSSH's own; "
        "default: default,curve25519-sha256)",
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
    kexes = ["" if k == "default" else k for k in args.kex.split(",") if k.strip()]
    if not kexes or not all(KEX.fullmatch(k) for k in kexes if k):
        parser.error(f"--kex {args.kex!r}: comma-separated KexAlgorithms names or 'default'")
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    unwind_on_sigterm()
    rows: list[Row] = []
    notes: list[str] = []
    groups = CpuGroups()
    try:
        with tempfile.TemporaryDirectory(prefix="zg-bench-segment-") as tmp:
            for count in sizes:
                got, more = bench_fleet(
                    count, args.concurrency, args.sequential_max, kexes, Path(tmp), groups
                )
                rows += got
                notes += more
                print(f"N={count} done", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print("interrupted; namespaces and temporary files removed", file=sys.stderr)
        return 130
    finally:
        groups.close()
    print(
        f"segment enforcement on real SSH hosts ({os.cpu_count()} CPUs, server {IPv4Address(SERVER_ADDRESS)}; "
        "server and hosts share them)"
    )
    print_table(HEADERS, [r.cells() for r in rows])
    for note in notes + summary(rows):
        print(f"  - {note}")
    return 1 if any(r.failures for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
