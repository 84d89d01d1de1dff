"""Benchmark: the cost of flow recording at the gateway, and the flow rate it records without loss.

Run (as root): .venv/bin/python bench/flows.py [--seconds S] [--burst-seconds S] [--workers N]

Needs root (network namespaces), iperf3, wireguard-go, wg, nft, conntrack.
One testbed Lab (controller, gateway, one connector, one client: alice), in one run:

1. cost: iperf3 (one TCP stream, --seconds) client -> gateway -> connector -> app,
   with recording on (the gateway as it runs by default) and off (the gateway
   restarted with its recorder disabled, as ``flow_records = false`` does, and
   byte accounting and entry timestamps off in its namespace). The order is
   on, off, on again (the second "on" shows the noise). CPU: user+system
   seconds of every process in the gateway's namespace (the daemon,
   wireguard-go) during the run, per GB forwarded; the kernel's forwarding in
   softirq is in neither.
2. flow rate: --workers client threads open short TCP connections (connect,
   read one byte, close) to the app for --burst-seconds as fast as they can;
   every one is a flow at the gateway. Then: how many records the controller
   holds for that port against how many connections the client completed, and
   the gateway's kernel-side overflow reports ("lost_events") in its log.
   TCP TIME_WAIT in the gateway's namespace is set to 1 s so that the DESTROY
   events (and so the records) come within seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from _common import unwind_on_sigterm

from dataplane import (
    IPERF_PORT,
    POLICY,
    BenchError,
    close_lab,
    parse_iperf,
    print_notes,
    print_table,
    tcp_connects,
    wait_listening,
)
from zerogate.netops.command import run
from zerogate.testbed.lab import Lab, wait_for
from zerogate.testbed.localrun import zerogate_argv
from zerogate.testbed.topology import Topology

BENCH_APP = "flowbench"
SHORT_PORT = 5203

ONE_BYTE_SERVER = r"""
import socket, sys, threading
srv = socket.create_server(("0.0.0.0", int(sys.argv[1])), backlog=1024)
while True:
    conn, _ = srv.accept()
    try:
        conn.sendall(b"z")
    finally:
        conn.close()
"""

CONNECTOR = r"""
import json, socket, sys, threading, time
host, port, seconds, workers = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
done = [0] * workers
failed = [0] * workers
deadline = time.monotonic() + seconds
def work(i):
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=3) as s:
                if s.recv(1) == b"z":
                    done[i] += 1
                else:
                    failed[i] += 1
        except OSError:
            failed[i] += 1
threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
started = time.monotonic()
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps({"done": sum(done), "failed": sum(failed), "seconds": time.monotonic() - started}))
"""


def ns_pids(ns: str) -> list[int]:
    out = run(["ip", "netns", "pids", ns], check=False).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def cpu_seconds(pids: list[int]) -> float:
    """user + system CPU seconds of ``pids`` (those still running)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / tick


def start_gateway(lab: Lab, recording: bool) -> None:
    """(Re)start the Lab's gateway with recording on or off, and wait until alice gets through."""
    if "gw" in lab.daemons:
        lab.stop("gw")
    ns, args, _ = lab.spawned["gw"]
    setting = [] if recording else ["env", "ZEROGATE_GATEWAY_FLOW_RECORDS=false"]
    argv = [*setting, *zerogate_argv(), *args]
    log = lab.topo.tmp / "gw.log"
    lab.daemons["gw"] = lab.topo.popen(ns, [*argv, "--log-level", "debug"], log=log)
    word = "recording flows" if recording else "flow records are off"
    before = lab.log("gw").count(word)
    wait_for(lambda: lab.log("gw").count(word) > before, 30, f"the gateway saying {word!r}")


def set_accounting(topo: Topology, on: bool) -> None:
    value = "1" if on else "0"
    topo.run(
        "gw",
        [
            "sysctl",
            "-qw",
            f"net.netfilter.nf_conntrack_acct={value}",
            f"net.netfilter.nf_conntrack_timestamp={value}",
        ],
    )


def iperf_once(topo: Topology, app: str, seconds: float) -> tuple[float, float, float]:
    """(Gbit/s, gateway CPU seconds, CPU seconds per GB) of one iperf3 run."""
    gw_ns = topo.ns("gw")
    pids = ns_pids(gw_ns)
    before = cpu_seconds(pids)
    r = topo.run(
        "cl1",
        ["iperf3", "-c", app, "-p", str(IPERF_PORT), "-t", str(seconds), "-J", "--connect-timeout", "3000"],
        check=False,
        timeout=seconds + 30,
    )
    cpu = cpu_seconds(pids) - before
    bps = parse_iperf(r.stdout)
    gigabytes = bps * seconds / 8 / 1e9
    return bps / 1e9, cpu, cpu / gigabytes if gigabytes else float("nan")


def records_for(lab: Lab, port: int, since: str) -> int:
    count, after = 0, 0
    while True:
        page = lab.admin.get("/v1/flows", {"since": since, "after_id": after, "limit": 1000})
        count += sum(1 for r in page if r["port"] == port and r["denied"] is None)
        if len(page) < 1000:
            return count
        after = page[-1]["id"]


def cost_part(lab: Lab, args: argparse.Namespace) -> dict[str, Any]:
    topo, app = lab.topo, str(lab.topo.app_address)
    rows: list[list[str]] = []
    results: dict[str, list[tuple[float, float, float]]] = {"on": [], "off": []}
    for phase in ("on", "off", "on"):
        if phase == "off" or results["off"]:
            start_gateway(lab, phase == "on")
            set_accounting(topo, phase == "on")
            wait_for(lambda: tcp_connects(topo, "cl1", app, IPERF_PORT), 30, "alice reaching iperf again")
        gbps, cpu, per_gb = iperf_once(topo, app, args.seconds)
        results[phase].append((gbps, cpu, per_gb))
        rows.append([f"recording {phase}", f"{gbps:.3f}", f"{cpu:.2f}", f"{per_gb:.2f}"])
    print_table(["gateway", "Gbit/s", "gw CPU s", "CPU s/GB"], rows)
    return results


def rate_part(lab: Lab, args: argparse.Namespace) -> dict[str, Any]:
    topo, app = lab.topo, str(lab.topo.app_address)
    since = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(time.time() - 1))
    log_before = lab.log("gw")
    r = topo.run(
        "cl1",
        [
            sys.executable,
            "-I",
            "-c",
            CONNECTOR,
            app,
            str(SHORT_PORT),
            str(args.burst_seconds),
            str(args.workers),
        ],
        timeout=args.burst_seconds + 60,
    )
    made = json.loads(r.stdout)
    expected = made["done"]

    # conntrack forgets a flow (and the gateway records it) when its garbage collector
    # gets to the expired entry: in bursts, up to a minute or more after TIME_WAIT
    def tracked() -> int:
        listing = topo.run("gw", ["conntrack", "-L", "-p", "tcp", "--dport", str(SHORT_PORT)], check=False)
        return sum(1 for line in listing.stdout.splitlines() if line.startswith("tcp"))

    waited = time.monotonic()
    wait_for(lambda: tracked() == 0, 300, f"the gateway's conntrack forgetting port {SHORT_PORT}", interval=2)
    forgotten = time.monotonic() - waited
    last, stable_since = -1, time.monotonic()
    while time.monotonic() - stable_since < 8:  # batches go every 2 s
        got = records_for(lab, SHORT_PORT, since)
        if got != last:
            last, stable_since = got, time.monotonic()
        time.sleep(1)
    lost_lines = [
        line for line in lab.log("gw")[len(log_before) :].splitlines() if "flow records lost" in line
    ]
    rate = expected / made["seconds"]
    print(f"(conntrack in the gateway's namespace forgot the last of them {forgotten:.0f} s after the burst)")
    print_table(
        ["short connections", "made", "failed", "conn/s", "records", "missing", "loss warnings"],
        [
            [
                f"{args.workers} workers, {args.burst_seconds:g} s",
                str(expected),
                str(made["failed"]),
                f"{rate:.0f}",
                str(last),
                str(max(0, expected - last)),
                str(len(lost_lines)),
            ]
        ],
    )
    for line in lost_lines[:5]:
        print(f"    {line}")
    return {"made": expected, "failed": made["failed"], "rate": rate, "records": last, "lost": lost_lines}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="each iperf3 run (default 8)")
    parser.add_argument(
        "--burst-seconds", type=float, default=10.0, help="short-connection burst (default 10)"
    )
    parser.add_argument(
        "--workers", type=int, default=8, help="client threads opening connections (default 8)"
    )
    args = parser.parse_args(argv)
    unwind_on_sigterm()
    with Topology(clients=1, connectors=1, attacker=False) as topo:
        lab = Lab(topo)
        try:
            iperf = topo.popen("app", ["iperf3", "-s", "-p", str(IPERF_PORT)], log=topo.tmp / "iperf3.log")
            short = topo.popen(
                "app",
                [sys.executable, "-I", "-c", ONE_BYTE_SERVER, str(SHORT_PORT)],
                log=topo.tmp / "short.log",
            )
            wait_listening(topo, "app", IPERF_PORT, iperf, "iperf3 server")
            wait_listening(topo, "app", SHORT_PORT, short, "one-byte server")
            topo.run("gw", ["sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_timeout_time_wait=1"])
            lab.start_controller()
            lab.create_org()
            lab.start_gateway()
            lab.start_connector(1)
            lab.wait_connectors_up(["cn1"])
            lab.client_login("alice")
            lab.client_up("alice")
            app = str(topo.app_address)
            lab.admin.post(
                "/v1/applications",
                {
                    "name": BENCH_APP,
                    "connector_group": "site",
                    "destinations": [
                        {
                            "address": f"{app}/32",
                            "protocol": "tcp",
                            "ports": [str(IPERF_PORT), str(SHORT_PORT)],
                        }
                    ],
                },
            )
            apps = lab.admin.get(f"/v1/policies/{POLICY}")["applications"]
            lab.admin.patch(f"/v1/policies/{POLICY}", {"applications": [*apps, BENCH_APP]})
            wait_for(lambda: tcp_connects(topo, "cl1", app, SHORT_PORT), 20, "alice reaching the bench app")
            print("\n1. cost of recording (iperf3, one TCP stream through the tunnel)\n", flush=True)
            cost = cost_part(lab, args)
            print("\n2. flow rate recorded (short TCP connections through the gateway)\n", flush=True)
            rate = rate_part(lab, args)
            print()
            on = [g for g, _, _ in cost["on"]]
            off = cost["off"][0][0]
            print_notes(
                [
                    f"throughput with recording / without: {min(on) / off:.3f} to {max(on) / off:.3f}",
                    f"flows recorded: {rate['records']} of {rate['made']} "
                    f"({100 * rate['records'] / max(1, rate['made']):.1f}%) at {rate['rate']:.0f} new flows/s",
                    "2 shared cores: iperf3, wireguard-go (client, gateway, connector) and the "
                    "controller compete for them",
                ]
            )
        except BenchError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except BaseException:
            for role in ("gw", "cn1"):
                print(f"--- {role} log (tail) ---\n{lab.log(role)[-2000:]}", file=sys.stderr)
            raise
        finally:
            close_lab(lab, topo)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
