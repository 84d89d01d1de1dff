"""Benchmark: learning from conntrack events at scale, against a known generated load.

Run (as root): .venv/bin/python bench/segment_learning.py [--hosts 4] [--clients 2]
               [--rates 50,200,1000,5000,10000] [--duration 10] [--max-connections 200000]

Needs root (network namespaces), sshd, ssh, nft and conntrack. A fleet of ``--hosts``
real sshd hosts and ``--clients`` client namespaces is built
(:class:`zerogate.testbed.sshhosts.SshFleet`, names ``zgsh<hex>``, all removed however
the run ends). Each host runs a small accept-and-close TCP server on one port per rate
step. Two observers watch every host at the same time:

- ``ssh``: the segment server's event session (:class:`zerogate.segment.events.EventStream`
  over SSH, the exact command the server runs: learning table, then
  ``conntrack -E -e NEW -o timestamp,extended``), feeding an
  :class:`~zerogate.segment.events.EventLedger` as in the server, run in this process
  from the server namespace;
- ``local`` (the baseline): the same ``conntrack -E`` run inside the host's namespace by
  a small reader process, no SSH, parsed with the same parser.

For each overall rate K (``--rates``, connections per second, spread over the clients
and hosts) the clients make short TCP connections (connect, then close with RST) for
``--duration`` seconds, each from a distinct source port, and report every connection
that was made. An observer *recorded* a connection when it read its NEW event (same
5-tuple); loss = made connections it did not record. The steps stop after the first
one where the ``ssh`` observer lost any, when the clients cannot reach the rate (below
90% of it: the machine is the bound), or before ``--max-connections`` would be passed.

Columns: target and achieved rate, connections made, loss of each observer, NEW events
per second read per host (mean) and overall by the ``ssh`` observer, kernel overflow
warnings ("ENOBUFS") seen by each, and the server side's CPU (this process and its
``ssh`` clients, % of one core) and RSS (MB). Clients, hosts, sshd, conntrack and the
baseline readers share this machine's cores with the server. The defaults take about
a minute and a half.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from _common import unwind_on_sigterm

from dataplane import print_table
from zerogate.netops.conntrack import ConntrackEvents, stream_argv
from zerogate.segment.events import EventLedger, EventStream, session_argv
from zerogate.segment.ssh import Access
from zerogate.testbed.sshhosts import SshFleet, SshHost, client_address

PORT_BASE = 20000  # step i listens on PORT_BASE + i
SPORT_FIRST, SPORTS = 10000, 50000  # source ports the clients bind, one per connection and host
SETTLE = 1.0  # seconds without a new event before a step's counts are read
SETTLE_MAX = 15.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024

SINK = r"""
import selectors, socket, sys
host, ports = sys.argv[1], [int(p) for p in sys.argv[2].split(",")]
sel = selectors.DefaultSelector()
for port in ports:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port))
    s.listen(4096)
    s.setblocking(False)
    sel.register(s, selectors.EVENT_READ)
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        for _ in range(256):
            try:
                conn, _ = key.fileobj.accept()
            except (BlockingIOError, ConnectionError):
                break
            conn.close()
"""

# argv: own address, hosts (comma-separated), port, rate, seconds, first host index offset
CLIENT = r"""
import json, socket, struct, sys, time
me, hosts, port, rate, seconds = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
first, count = int(sys.argv[6]), int(sys.argv[7])
linger = struct.pack("ii", 1, 0)
made, failed = [], 0
total = int(rate * seconds)
start = time.monotonic()
for i in range(total):
    due = start + i / rate
    now = time.monotonic()
    if due > now:
        time.sleep(due - now)
    h = i % len(hosts)
    sport = first + (i // len(hosts)) % count
    s = socket.socket()
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        s.settimeout(2)
        s.bind((me, sport))
        s.connect((hosts[h], port))
        made.append((h, sport))
    except OSError:
        failed += 1
    finally:
        s.close()
print(json.dumps({"made": made, "failed": failed, "seconds": time.monotonic() - start}))
"""

# the baseline: conntrack -E in this namespace, no SSH; stops when stdin closes
LOCAL = r"""
import json, os, subprocess, sys, threading
from zerogate.netops.conntrack import parse_events
ports = {int(p) for p in sys.argv[1].split(",")}
proc = subprocess.Popen(sys.argv[2:], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
threading.Thread(target=lambda: (sys.stdin.read(), proc.terminate()), daemon=True).start()
seen, overflows, rest = {}, 0, b""
while True:
    chunk = os.read(proc.stdout.fileno(), 65536)
    if not chunk:
        break
    data = rest + chunk
    cut = data.rfind(b"\n") + 1
    rest = data[cut:]
    parsed = parse_events(data[:cut].decode("utf-8", "replace"))
    overflows += parsed.overflows
    for e in parsed.events:
        c = e.connection
        if c.dport in ports:
            seen.setdefault(str(c.dport), []).append([str(c.src), c.sport])
proc.wait()
print(json.dumps({"seen": seen, "overflows": overflows}))
"""


# --------------------------------------------------------------------------- observers


class Recorder:
    """The ``ssh`` observer's sink: the server's ledger, plus the 5-tuples of the load."""

    def __init__(self, ports: set[int], cap: int) -> None:
        self.ports = ports
        self.ledger = EventLedger(cap)
        self.seen: dict[int, set[tuple[str, int]]] = defaultdict(set)
        self.events = 0
        self.last_event = time.monotonic()
        self.lock = threading.Lock()

    def __call__(self, parsed: ConntrackEvents, at: datetime) -> None:
        self.ledger.add(parsed, at)
        with self.lock:
            for e in parsed.events:
                c = e.connection
                if c.dport in self.ports:
                    self.seen[c.dport].add((str(c.src), c.sport))
                    self.events += 1
                    self.last_event = time.monotonic()


def subscribers(fleet: SshFleet, host: SshHost) -> int:
    """Netfilter netlink sockets (protocol 12) in multicast groups in the host's namespace."""
    rows = fleet.run(host.ns, ["cat", "/proc/net/netlink"]).stdout.splitlines()[1:]
    return sum(1 for row in (r.split() for r in rows) if row[1] == "12" and int(row[3], 16) != 0)


def wait_until(probe: Any, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > end:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


def proc_cpu_rss(pid: int) -> tuple[float, int]:
    """CPU seconds and RSS (kB) of one process; zeros when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(stat[11]) + int(stat[12])) / CLK_TCK, int(stat[21]) * PAGE_KB
    except (OSError, IndexError, ValueError):
        return 0.0, 0


def server_usage(streams: Sequence[EventStream]) -> tuple[float, int]:
    """CPU seconds and RSS (kB) of this process and its ssh clients now."""
    cpu, rss = proc_cpu_rss(os.getpid())
    for stream in streams:
        pid = stream.pid
        if pid is not None:
            c, r = proc_cpu_rss(pid)
            cpu, rss = cpu + c, rss + r
    return cpu, rss


# --------------------------------------------------------------------------- the run


@dataclass
class Step:
    rate: int
    port: int
    made: set[tuple[str, str, int]]  # (client, host, sport)
    seconds: float
    failed: int
    cpu: float
    rss_kb: int
    bound: str = ""


def run_load(
    fleet: SshFleet, rate: int, port: int, seconds: float, python: str
) -> tuple[set[Any], float, int]:
    hosts = ",".join(str(h.address) for h in fleet.hosts)
    per_client = rate / fleet.clients
    procs = []
    for j in range(fleet.clients):
        argv = ["ip", "netns", "exec", fleet.client_ns(j), python, "-c", CLIENT, str(client_address(j)), hosts,
                str(port), f"{per_client:g}", f"{seconds:g}", str(SPORT_FIRST), str(SPORTS)]  # fmt: skip
        procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, text=True))
    made: set[tuple[str, str, int]] = set()
    longest, failed = 0.0, 0
    for j, proc in enumerate(procs):
        out, _ = proc.communicate(timeout=seconds * 4 + 60)
        got = json.loads(out)
        longest, failed = max(longest, got["seconds"]), failed + got["failed"]
        made |= {(str(client_address(j)), str(fleet.hosts[h].address), sport) for h, sport in got["made"]}
    return made, longest, failed


def lost(made: set[tuple[str, str, int]], seen: set[tuple[str, str, int]]) -> float:
    return 100.0 * len(made - seen) / max(1, len(made))


def bench(args: argparse.Namespace, tmp: Path) -> tuple[list[list[str]], list[str]]:
    rates = args.rates
    ports = [PORT_BASE + i for i in range(len(rates))]
    python = sys.executable
    extra: list[subprocess.Popen[str]] = []
    streams: list[EventStream] = []
    recorders: dict[str, Recorder] = {}
    with SshFleet(args.hosts, tmp / "fleet", clients=args.clients) as fleet:
        try:
            access = Access(fleet.key, tmp / "state", remote_dir=str(tmp / "on-host"))
            for host in fleet.hosts:
                sink = subprocess.Popen(
                    ["ip", "netns", "exec", host.ns, python, "-c", SINK, str(host.address),
                     ",".join(map(str, ports))], stdout=subprocess.PIPE, text=True,
                )  # fmt: skip
                extra.append(sink)
                assert sink.stdout is not None and sink.stdout.readline().strip() == "ready"
                recorder = Recorder(set(ports), args.max_connections + 1)
                recorders[str(host.address)] = recorder
                asset = host.asset(mode="learning")
                stream = EventStream(host.ns, lambda a=asset: session_argv(a, access), recorder)
                streams.append(stream)
                fleet.call(stream.start)  # its thread and ssh in the server namespace
            for host in fleet.hosts:
                wait_until(lambda h=host: subscribers(fleet, h) >= 1, 30, f"the ssh session on {host.ns}")
            locals_: dict[str, subprocess.Popen[str]] = {}
            for host in fleet.hosts:
                argv = ["ip", "netns", "exec", host.ns, python, "-c", LOCAL, ",".join(map(str, ports)),
                        "conntrack", *stream_argv()[1:]]  # fmt: skip
                proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                extra.append(proc)
                locals_[str(host.address)] = proc
            for host in fleet.hosts:
                wait_until(lambda h=host: subscribers(fleet, h) >= 2, 30, f"the local reader on {host.ns}")

            steps: list[Step] = []
            total = 0
            for rate, port in zip(rates, ports, strict=True):
                if total + rate * args.duration > args.max_connections:
                    print(f"{rate}/s: would pass --max-connections; stopping", file=sys.stderr)
                    break
                cpu0, _ = server_usage(streams)
                began = time.monotonic()
                made, seconds, failed = run_load(fleet, rate, port, args.duration, python)
                wait_until(
                    lambda: all(time.monotonic() - r.last_event >= SETTLE for r in recorders.values()),
                    SETTLE_MAX + args.duration,
                    "the events to settle",
                )
                cpu1, rss = server_usage(streams)
                step = Step(
                    rate, port, made, seconds, failed, (cpu1 - cpu0) / (time.monotonic() - began), rss
                )
                total += len(made)
                steps.append(step)
                seen = {(c, h, sp) for h, r in recorders.items() for c, sp in r.seen[port]}
                print(f"{rate}/s done: made {len(made)}, ssh lost {lost(made, seen):.2f}%", file=sys.stderr,
                      flush=True)  # fmt: skip
                if len(made) / max(seconds, 1e-9) < 0.9 * rate or failed > 0.01 * (len(made) + failed):
                    step.bound = "clients"
                    break
                if made - seen:
                    break

            local_seen: dict[int, set[tuple[str, str, int]]] = defaultdict(set)
            local_overflows = 0
            for address, proc in locals_.items():
                out, _ = proc.communicate("", timeout=60)
                got = json.loads(out)
                local_overflows += got["overflows"]
                for dport, pairs in got["seen"].items():
                    local_seen[int(dport)] |= {(c, address, sp) for c, sp in pairs}
        finally:
            for stream in streams:
                stream.request_stop()
            for stream in streams:
                stream.stop()
            for proc in extra:
                if proc.poll() is None:
                    proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.communicate(timeout=10)

    rows = []
    overflows = sum(r.ledger.overflows for r in recorders.values())
    for step in steps:
        seen = {(c, h, sp) for h, r in recorders.items() for c, sp in r.seen[step.port]}
        recorded = len(step.made & seen)
        per_second = recorded / max(step.seconds, 1e-9)
        rows.append([
            f"{step.rate}/s", f"{len(step.made) / max(step.seconds, 1e-9):.0f}/s", str(len(step.made)),
            f"{lost(step.made, seen):.2f}%", f"{lost(step.made, local_seen[step.port]):.2f}%",
            f"{per_second / args.hosts:.0f}", f"{per_second:.0f}",
            f"{100 * step.cpu:.0f}%", f"{step.rss_kb / 1024:.0f}", step.bound or "-",
        ])  # fmt: skip
    notes = [
        f"kernel overflow warnings (ENOBUFS) over the run: ssh observer {overflows}, local {local_overflows}",
    ]
    clean = [
        s
        for s in steps
        if not (s.made - {(c, h, sp) for h, r in recorders.items() for c, sp in r.seen[s.port]})
    ]
    if clean:
        best = max(clean, key=lambda s: len(s.made) / max(s.seconds, 1e-9))
        rate = len(best.made) / max(best.seconds, 1e-9)
        notes.append(
            f"no loss over SSH up to {rate:.0f} new connections/s overall ({rate / args.hosts:.0f} per host)"
        )
    return rows, notes


HEADERS = ["target", "achieved", "made", "ssh loss", "local loss", "ev/s/host", "ev/s all", "srv CPU",
           "srv RSS MB", "bound"]  # fmt: skip


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog="\n".join(__doc__.splitlines()[2:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--hosts", type=int, default=4, help="hosts observed (default 4)")
    parser.add_argument(
        "--clients", type=int, default=2, help="client namespaces making the load (default 2)"
    )
    parser.add_argument(
        "--rates", default="50,200,1000,5000,10000", help="overall new connections per second, one step each"
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per step (default 10)")
    parser.add_argument(
        "--max-connections",
        type=int,
        default=200_000,
        help="bound on connections over the run (default 200000)",
    )
    args = parser.parse_args(argv)
    try:
        args.rates = [int(r) for r in args.rates.split(",") if r.strip()]
    except ValueError:
        parser.error(f"--rates {args.rates!r}: comma-separated integers, e.g. 50,200,1000")
    if not args.rates or any(not 1 <= r <= 100_000 for r in args.rates):
        parser.error("--rates: each between 1 and 100000")
    if not 1 <= args.hosts <= 200 or not 1 <= args.clients <= 32:
        parser.error("--hosts 1-200, --clients 1-32")
    if not 1 <= args.duration <= 600:
        parser.error("--duration: 1 to 600 seconds")
    per_pair = max(args.rates) * args.duration / args.clients / args.hosts
    if per_pair > SPORTS:
        parser.error("a step would reuse source ports: fewer seconds, a lower rate or more clients/hosts")
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    unwind_on_sigterm()
    try:
        with tempfile.TemporaryDirectory(prefix="zg-bench-learning-") as tmp:
            rows, notes = bench(args, Path(tmp))
    except KeyboardInterrupt:
        print("interrupted; namespaces and temporary files removed", file=sys.stderr)
        return 130
    print(
        f"segment learning from conntrack events ({os.cpu_count()} CPUs shared by server, {args.hosts} hosts, "
        f"{args.clients} clients; {args.duration:g} s per step; server {IPv4Address('10.99.0.1')})"
    )
    print_table(HEADERS, rows)
    for note in notes:
        print(f"  - {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
