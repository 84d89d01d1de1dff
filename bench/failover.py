"""Benchmark: connector failover -- the traffic gap a client sees when the serving connector dies.

Run (as root): .venv/bin/python bench/failover.py [--kills N] [--modes a,b,c,d] [--verbose]

Needs root (network namespaces), wireguard-go, wg, nft, nginx and, for the
VRRP rows, keepalived. One testbed Lab (controller, gateway, two connectors of
group ``site``, alice's client, nginx on the LAN), reused for every mode:

(a) probe-based hot standby (no virtual IP, SNAT on): the gateway's probes
    notice the dead connector and move the group's subnets to the other.
(b) VRRP, keepalived's default timers (advertisement every 1 s), SNAT off, the
    app routing the client pool via the virtual IP; the gateway follows the
    new master's state message.
(c) VRRP tuned: the connector's default advertisement interval.
(d) active-active (SNAT on, no virtual IP): both connectors carry new flows,
    spread by hash buckets; a kill alternates between them. Besides the gap
    (new connections as a whole), a second row gives how long the dead member's
    share of new connections kept failing: from the kill to the start of the
    last attempt that failed, until the gateway's probes moved its buckets.

A poller inside alice's namespace (``_common.Poller``) starts a fresh TCP connection to the app
every 20 ms (each may take 250 ms; slower counts as failed). Each kill is
:meth:`Lab.crash_connector` on the connector serving now (SIGKILL to its
keepalived, daemon and wireguard-go, its tunnel interface deleted). The gap is
the longest time between the ends of two successive connections that worked,
from the last one before the kill began to the first one started after the
kill was done. The killed connector is then started again and rejoins as
standby/backup before the next kill (VRRP: its recorded state is BACKUP; a
freshly started connector sits in FAULT until its tunnel check passes), so
kills alternate between the two. Each kill line says whether the gateway moved
the group on the new master's claim or by its probes; --verbose adds the
gateway's and the new master's log lines. Prints one table: p50 and max per
mode. The default run (5 kills per mode) takes about four minutes.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from functools import partial

from _common import Poller, percentile, unwind_on_sigterm

from dataplane import print_table
from zerogate.testbed.apps import start_nginx
from zerogate.testbed.lab import Lab, wait_for
from zerogate.testbed.topology import Topology

MODES = ("a", "b", "c", "d")
KEEPALIVED_DEFAULT_ADVERT = "1"  # seconds: keepalived's own advert_int default
EVERY = 0.02  # seconds between the poller's connection starts
ATTEMPT = 0.25  # a connection not made within this counts as failed
GIVE_UP = 30.0  # a failover (or a rejoin) slower than this is an error
STANDBY_WAIT = 10.0  # seconds to wait for the backup to be ready before a VRRP kill


def vrrp_available() -> str | None:
    """Why the VRRP rows cannot run here, or None."""
    if importlib.util.find_spec("zerogate.connector.vrrp_agent") is None:
        return "not built (no zerogate.connector.vrrp_agent)"
    if shutil.which("keepalived") is None:
        return "keepalived not installed"
    return None


def serving_connector(lab: Lab) -> int:
    """The connector whose peer holds the LAN in the gateway's WireGuard allowed IPs."""
    t = lab.topo
    gw = t.run("gw", ["wg", "show", t.wg_interface("gw"), "allowed-ips"]).stdout
    holder = next(line.split()[0] for line in gw.splitlines() if str(t.lan) in line.split()[1:])
    for i in (1, 2):
        key = t.run(f"cn{i}", ["wg", "show", t.wg_interface(f"cn{i}"), "public-key"], check=False).stdout
        if key.strip() == holder:
            return i
    raise RuntimeError(f"no connector holds {t.lan}")


def holds_vip(lab: Lab, i: int) -> bool:
    t = lab.topo
    out = t.run(f"cn{i}", ["ip", "-br", "-4", "addr", "show", "dev", t.lan_interface(f"cn{i}")], check=False)
    return f" {t.virtual_ip}/" in out.stdout


def vrrp_master(lab: Lab) -> int:
    def one() -> bool:
        return sum(holds_vip(lab, i) for i in (1, 2)) == 1

    wait_for(one, GIVE_UP, "exactly one connector holding the virtual IP")
    return 1 if holds_vip(lab, 1) else 2


def start_connectors(lab: Lab, env: dict[str, str] | None) -> None:
    """(Re)start both connectors with ``env``; wait until the gateway hears them again."""
    offset = len(lab.log("gw"))
    for i in (1, 2):
        if f"cn{i}" in lab.daemons:
            lab.stop(f"cn{i}")
        lab.start_connector(i, enroll=f"cn{i}" not in lab.spawned, env=env)
    wait_for(
        lambda: all(f"connector cn{i} is up" in lab.log("gw")[offset:] for i in (1, 2)),
        GIVE_UP,
        "both connectors up at the gateway",
    )


def rejoin(lab: Lab, i: int, vrrp: bool) -> None:
    """Start the killed connector ``i`` again and wait until it is a standby that could take over."""
    role = f"cn{i}"
    gw_offset, cn_offset = len(lab.log("gw")), len(lab.log(role))
    lab.restart(role)
    wait_for(lambda: f"connector {role} is up" in lab.log("gw")[gw_offset:], GIVE_UP, f"{role} up again")
    if vrrp:
        wait_for(lambda: "-> BACKUP" in lab.log(role)[cn_offset:], GIVE_UP, f"{role} back as VRRP backup")


def vrrp_state(lab: Lab, i: int) -> str:
    """Connector ``i``'s VRRP state as it records it for ``connector status``."""
    try:
        return str(json.loads((lab.state(f"cn{i}") / "vrrp.json").read_text())["state"]).lower()
    except (OSError, ValueError, KeyError, TypeError):
        return "unknown"


def standby_ready(lab: Lab, i: int) -> bool:
    """Wait (up to STANDBY_WAIT s) until connector ``i`` is VRRP backup, able to take over."""
    try:
        wait_for(lambda: vrrp_state(lab, i) == "backup", STANDBY_WAIT, f"cn{i} VRRP backup")
    except TimeoutError:
        return False
    return True


def logged(lab: Lab, text: str, offset: int) -> bool:
    return text in lab.log("gw")[offset:]


def kills(
    lab: Lab, poller: Poller, n: int, what: str, serving: Callable[[], int], vrrp: bool, verbose: bool
) -> list[float]:
    gaps = []
    for k in range(n):
        victim = serving()
        wait_for(lambda: poller.working(time.monotonic() - 0.1), GIVE_UP, "alice reaching the app", 0.02)
        if vrrp and not standby_ready(lab, 3 - victim):
            print(
                f"  note: cn{3 - victim} is not VRRP backup (it is {vrrp_state(lab, 3 - victim)}) at the kill"
            )
        offset, other_offset = len(lab.log("gw")), len(lab.log(f"cn{3 - victim}"))
        killed = time.monotonic()
        lab.crash_connector(victim)
        gaps.append(poller.gap(killed, time.monotonic(), GIVE_UP))
        moved = f"now served by cn{3 - victim}"
        wait_for(partial(logged, lab, moved, offset), GIVE_UP, f"the gateway logging '{moved}'")
        how = "VRRP claim" if logged(lab, f"{moved} (VRRP master)", offset) else "probes"
        print(
            f"  {what} kill {k + 1}/{n}: cn{victim} killed, gap {gaps[-1]:.2f} s (gateway: {how})", flush=True
        )
        if verbose:
            for line in lab.log("gw")[offset:].splitlines():
                if "VRRP" in line or "served by" in line or "is down" in line:
                    print(f"    gw: {line[:200]}")
            for line in lab.log(f"cn{3 - victim}")[other_offset:].splitlines():
                if "VRRP" in line:
                    print(f"    cn{3 - victim}: {line[:200]}")
        rejoin(lab, victim, vrrp)
    return gaps


def aa_kills(lab: Lab, poller: Poller, n: int, verbose: bool) -> tuple[list[float], list[float]]:
    """(d): kill each member in turn; (gaps, how long the dead member's share failed)."""
    gaps, failing = [], []
    for k in range(n):
        victim = k % 2 + 1
        wait_for(lambda: poller.working(time.monotonic() - 0.1), GIVE_UP, "alice reaching the app", 0.02)
        offset = len(lab.log("gw"))
        killed = time.monotonic()
        lab.crash_connector(victim)
        gaps.append(poller.gap(killed, time.monotonic(), GIVE_UP))
        moved = f"spread over cn{3 - victim} 64"
        wait_for(partial(logged, lab, moved, offset), GIVE_UP, f"the gateway logging '{moved}'")
        settled = time.monotonic()
        wait_for(partial(poller.working, settled + 2 * ATTEMPT), GIVE_UP, "connections after the move", 0.02)
        fails = [s for w, s, _ in list(poller.attempts) if not w and killed <= s <= settled]
        failing.append(max(fails) - killed if fails else 0.0)
        print(
            f"  (d) kill {k + 1}/{n}: cn{victim} killed, gap {gaps[-1]:.2f} s, "
            f"its share failed for {failing[-1]:.2f} s ({len(fails)} connections)",
            flush=True,
        )
        if verbose:
            for line in lab.log("gw")[offset:].splitlines():
                if "spread over" in line or "is down" in line:
                    print(f"    gw: {line[:200]}")
        offset = len(lab.log("gw"))
        rejoin(lab, victim, vrrp=False)
        wait_for(partial(spread_over_both, lab, offset), GIVE_UP, "both members serving again")
    return gaps, failing


def spread_over_both(lab: Lab, offset: int) -> bool:
    return any(
        "spread over cn1 " in line and ", cn2 " in line for line in lab.log("gw")[offset:].splitlines()
    )


def row(what: str, gaps: list[float]) -> list[str]:
    return [what, str(len(gaps)), f"{percentile(gaps, 50):.2f}", f"{max(gaps):.2f}"]


def run(args: argparse.Namespace) -> None:
    from_vc = vrrp_available()
    tuned = ""
    if from_vc is None:
        from zerogate.connector.vrrp import DEFAULT_ADVERT

        tuned = f"{DEFAULT_ADVERT:g}"
    rows: list[list[str]] = []
    with Topology(clients=1, connectors=2, attacker=False) as topo:
        start_nginx(topo)
        lab = Lab(topo)
        poller: Poller | None = None
        try:
            lab.start_controller()
            lab.create_org()
            lab.start_gateway()
            start_connectors(lab, None)
            lab.client_login("alice")
            lab.client_up("alice")
            client = topo.ns(lab.client_ns("alice"))
            poller = Poller.start(client, str(topo.app_address), 80, every=EVERY, attempt=ATTEMPT, limit=3600)
            started = time.monotonic()
            wait_for(lambda: poller is not None and poller.working(started), GIVE_UP, "alice reaches the app")
            if "a" in args.modes:
                gaps = kills(
                    lab,
                    poller,
                    args.kills,
                    "(a)",
                    lambda: serving_connector(lab),
                    vrrp=False,
                    verbose=args.verbose,
                )
                rows.append(row("(a) probe-based hot standby (SNAT on)", gaps))
            vrrp_modes = [
                (m, label, advert)
                for m, label, advert in (
                    ("b", "(b) VRRP, keepalived default timers", KEEPALIVED_DEFAULT_ADVERT),
                    ("c", "(c) VRRP tuned", tuned),
                )
                if m in args.modes
            ]
            if vrrp_modes and from_vc is None:
                lab.admin.patch("/v1/connector-groups/site", {"snat": False})
                lab.admin.patch("/v1/connector-groups/site", {"vrrp_virtual_ip": str(topo.virtual_ip)})
                topo.app_route_clients(via=topo.virtual_ip)
            for _, label, advert in vrrp_modes:
                if from_vc is not None:
                    rows.append([f"{label}: {from_vc}", "", "", ""])
                    continue
                start_connectors(lab, {"ZEROGATE_CONNECTOR_VRRP_ADVERT_INTERVAL": advert})
                vrrp_master(lab)
                gaps = kills(
                    lab,
                    poller,
                    args.kills,
                    label[:3],
                    lambda: vrrp_master(lab),
                    vrrp=True,
                    verbose=args.verbose,
                )
                rows.append(row(f"{label} (advert {advert} s, SNAT off)", gaps))
            if "d" in args.modes:
                lab.admin.patch(
                    "/v1/connector-groups/site",
                    {"vrrp_virtual_ip": "", "snat": True, "mode": "active-active"},
                )
                topo.app_route_clients_remove()
                start_connectors(lab, None)
                gaps, failing = aa_kills(lab, poller, args.kills, args.verbose)
                rows.append(row("(d) active-active, loss of one member of 2 (SNAT on)", gaps))
                rows.append(row("    (d) its share of new connections failing for", failing))
            print()
            print_table(["traffic gap after a kill (seconds)", "kills", "p50", "max"], rows)
            print(
                f"  - gap: the longest time between two successive fresh TCP connections that worked, "
                f"from before the kill to the first one started after it; one started every {EVERY * 1000:.0f} ms, "
                f"{ATTEMPT * 1000:.0f} ms allowed each; percentiles are nearest-rank"
            )
        except BaseException:
            for role in ("gw", "cn1", "cn2"):
                print(f"--- {role} log (tail) ---\n{lab.log(role)[-2000:]}", file=sys.stderr)
            raise
        finally:
            if poller is not None:
                poller.stop()
            lab.close()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=5, help="kills per mode (default 5)")
    parser.add_argument(
        "--modes", default=",".join(MODES), help="comma-separated modes of a,b,c,d to run (default all)"
    )
    parser.add_argument("--verbose", action="store_true", help="print the gateway's failover log lines")
    args = parser.parse_args(argv)
    args.modes = set(args.modes.split(","))
    if not 1 <= args.kills <= 50 or not args.modes <= set(MODES):
        parser.error("--kills must be from 1 to 50, --modes from a,b,c,d")
    if os.geteuid() != 0:
        print("error: the failover benchmark creates network namespaces; run it as root", file=sys.stderr)
        return 2
    unwind_on_sigterm()
    began = time.perf_counter()
    try:
        run(args)
    except KeyboardInterrupt:
        print("interrupted; namespaces, processes and temporary files removed", file=sys.stderr)
        return 130
    print(f"failover benchmark: ok in {time.perf_counter() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
