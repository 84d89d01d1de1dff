"""Benchmark: recovery after restarts -- gateway restart to traffic, controller restart to revocation.

Run (as root): .venv/bin/python bench/recovery.py [--rounds N] [--down S] [--parts gateway,controller]

Needs root (network namespaces), wireguard-go, wg, nft and nginx. One testbed
Lab (controller, gateway, two connectors, alice's client, nginx on the LAN):

1. gateway: --rounds times, the gateway daemon is stopped (SIGTERM, as systemd
   restarts it) and started again; measured from "gateway up" (its log line for
   the first revision it applies) until alice's client opens a fresh TCP
   connection to the app. Baseline, same run: the same restart with the
   gateway's saved peer endpoints (endpoints.json) removed first, so recovery
   waits on the peers' re-dial and WireGuard's own timers.
2. controller: --rounds times, the controller is stopped for --down seconds and
   started again; as soon as its API answers alice's device is revoked, and the
   time until her fresh TCP connections fail is measured (the attempt's end, as
   in tests/dataplane/reach.py). She then signs in and registers again.

Prints one table (p50 and max per measurement). With the defaults it takes
about two minutes.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable

from _common import percentile, unwind_on_sigterm

from dataplane import print_table
from zerogate.testbed.apps import start_nginx
from zerogate.testbed.lab import Lab, wait_for
from zerogate.testbed.topology import Topology

PARTS = ("gateway", "controller")
PROBE_TIMEOUT = 0.3  # a TCP connect through the tunnel takes a few ms
SURE_TIMEOUT = 3.0  # a failed short attempt counts only if a patient one right after fails too
GIVE_UP = 60.0  # a recovery or a cut slower than this is an error


def connects(lab: Lab, timeout: float = PROBE_TIMEOUT) -> bool:
    script = f"exec 3<>/dev/tcp/{lab.topo.app_address}/80"
    r = lab.topo.run(lab.client_ns("alice"), ["timeout", str(timeout), "bash", "-c", script], check=False)
    return r.returncode == 0


def deploy(lab: Lab) -> None:
    lab.start_controller()
    lab.create_org()
    lab.start_gateway()
    lab.start_connector(1)
    lab.start_connector(2)
    lab.wait_connectors_up(["cn1", "cn2"])
    lab.client_login("alice")
    lab.client_up("alice")
    wait_for(lambda: connects(lab, SURE_TIMEOUT), 30, "alice reaches the web app")


def gateway_round(lab: Lab, *, keep_endpoints: bool) -> tuple[float, float]:
    """Restart the gateway; seconds from its first applied revision, and from its
    process start, to alice's first connection."""
    wait_for(lambda: connects(lab, SURE_TIMEOUT), 30, "alice reaches the web app before the restart")
    offset = len(lab.log("gw"))
    lab.stop("gw")
    if not keep_endpoints:
        (lab.state("gw") / "endpoints.json").unlink(missing_ok=True)
    started = time.monotonic()
    lab.restart("gw")
    wait_for(lambda: "applied revision" in lab.log("gw")[offset:], 30, "the gateway applies its config", 0.01)
    up = time.monotonic()
    wait_for(lambda: connects(lab, 0.5), GIVE_UP, "alice reaches the web app again", 0.01)
    return time.monotonic() - up, time.monotonic() - started


def controller_round(lab: Lab, down: float) -> float:
    """Stop the controller for ``down`` s; seconds from its API answering (revoke sent)
    until alice's fresh connections fail. She signs in again afterwards."""
    wait_for(lambda: connects(lab, SURE_TIMEOUT), 30, "alice reaches the web app before the outage")
    lab.stop_controller()
    time.sleep(down)  # the outage itself: nothing to wait for but time passing
    lab.restart_controller()
    device = lab.device_id("alice")
    started = time.monotonic()
    lab.admin.post(f"/v1/devices/{device}/revoke")
    while True:
        attempt = time.monotonic()
        if not connects(lab) and not connects(lab, SURE_TIMEOUT):
            took = attempt - started + PROBE_TIMEOUT
            break
        if attempt - started > GIVE_UP:
            raise TimeoutError(f"alice's traffic still flows {GIVE_UP:.0f} s after the revocation")
    lab.client_login("alice")
    lab.client_up("alice", force=True)
    return took


def measure(rounds: int, what: str, one: Callable[[], float | tuple[float, float]]) -> list[list[float]]:
    """``rounds`` results of ``one`` (one number or a pair), as one list per number."""
    samples: list[list[float]] = []
    for i in range(rounds):
        got = one()
        values = list(got) if isinstance(got, tuple) else [got]
        samples = samples or [[] for _ in values]
        for column, value in zip(samples, values, strict=True):
            column.append(value)
        print(f"  {what} round {i + 1}/{rounds}: {' / '.join(f'{v:.2f} s' for v in values)}", flush=True)
    return samples


def row(what: str, samples: list[float]) -> list[str]:
    return [what, str(len(samples)), f"{percentile(samples, 50):.2f}", f"{max(samples):.2f}"]


def run(args: argparse.Namespace) -> None:
    with Topology(clients=1, connectors=2, attacker=False) as topo:
        start_nginx(topo)
        lab = Lab(topo)
        try:
            deploy(lab)
            rows = []
            if "gateway" in args.parts:
                fast, fast_start = measure(
                    args.rounds, "gateway", lambda: gateway_round(lab, keep_endpoints=True)
                )
                slow, _ = measure(args.rounds, "baseline", lambda: gateway_round(lab, keep_endpoints=False))
                gain = percentile(slow, 50) / max(percentile(fast, 50), 0.01)  # 0.01 s: the poll step
                rows += [
                    row("gateway up -> client reaches the app", fast),
                    row("  from the gateway process start", fast_start),
                    row("  baseline: endpoints.json removed", slow),
                    ["  baseline p50 / saved-endpoints p50", "", f"{gain:.0f}x", ""],
                ]
            if "controller" in args.parts:
                (cut,) = measure(args.rounds, "controller", lambda: controller_round(lab, args.down))
                rows.append(row(f"controller restart ({args.down:g} s down) -> revocation enforced", cut))
            print()
            print_table(["measurement (seconds)", "rounds", "p50", "max"], rows)
        except BaseException:
            for role in ("gw", "cn1", "cn2"):
                print(f"--- {role} log (tail) ---\n{lab.log(role)[-2000:]}", file=sys.stderr)
            raise
        finally:
            lab.close()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="restarts per measurement (default 5)")
    parser.add_argument(
        "--down", type=float, default=8.0, help="seconds the controller stays down (default 8)"
    )
    parser.add_argument(
        "--parts",
        default=",".join(PARTS),
        help=f"comma-separated parts to run, of {', '.join(PARTS)} (default all)",
    )
    args = parser.parse_args(argv)
    args.parts = set(args.parts.split(","))
    if args.rounds < 1 or args.down < 0 or not args.parts <= set(PARTS):
        parser.error("--rounds must be at least 1, --down at least 0, --parts from gateway,controller")
    if os.geteuid() != 0:
        print("error: the recovery benchmark creates network namespaces; run it as root", file=sys.stderr)
        return 2
    unwind_on_sigterm()
    began = time.perf_counter()
    try:
        run(args)
    except KeyboardInterrupt:
        print("interrupted; namespaces, processes and temporary files removed", file=sys.stderr)
        return 130
    print(f"recovery benchmark: ok in {time.perf_counter() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
