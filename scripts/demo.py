"""The local demo (`make demo`): the whole data plane on one machine.

Steps, each printed as it runs:
  1. build a topology of network namespaces: an "internet" segment with a
     client, a gateway and a connector; a private LAN behind the connector with
     an application host running real nginx, OpenSSH and PostgreSQL
  2. start the controller (its own CA, SQLite) and create the first admin
  3. create an organisation: connector group, apps, groups, policies, users
  4. enroll the gateway and two connectors of one group with install strings
     and start them (the connectors only dial out)
  5. sign the user in on the client (password + TOTP) and bring the split
     tunnel up
  6. show the user reaching an allowed application, being refused a port no
     policy grants and an application of another group, and the internet
     side not reaching the LAN at all
  7. fail over: cut the serving connector's uplink and time how long alice's
     new connections take to reach the app through the other connector
  8. print the flow records the gateway made of all this (who reached what,
     which policy decided, bytes; the refusals) and where the admin portal is
  9. tear everything down (processes by PID, namespaces, tunnels)

Needs root (namespaces, WireGuard, nftables). With a terminal attached it waits
for Enter before tearing down, so you can look around; otherwise it cleans up
by itself.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from rich.console import Console

from zerogate.testbed.apps import Apps, start_apps
from zerogate.testbed.lab import Lab
from zerogate.testbed.topology import Topology

console = Console(highlight=False, soft_wrap=True)
STEPS = 9


def step(n: int, text: str) -> None:
    console.print(f"\n[bold cyan][{n}/{STEPS}][/] [bold]{text}[/]")


def attempt(lab: Lab, ns: str, label: str, argv: list[str], expect_ok: bool) -> bool:
    """Run a real client command in a namespace and say whether it did what policy says."""
    started = time.monotonic()
    r = lab.topo.run(ns, argv, check=False, timeout=20)
    took = (time.monotonic() - started) * 1000
    ok = r.returncode == 0
    detail = (r.stdout.strip() or r.stderr.strip()).splitlines()
    shown = detail[-1] if detail else ""
    verdict = "[green]reached[/]" if ok else "[red]refused[/]"
    good = ok == expect_ok
    mark = "[green]as policy says[/]" if good else "[bold red]WRONG[/]"
    console.print(f"  {label:<46} {verdict} in {took:5.0f} ms  {mark}   [dim]{shown[:70]}[/]")
    return good


def show_access(lab: Lab, apps: Apps) -> bool:
    t = lab.topo
    app = t.app_address
    alice, dave = lab.client_ns("alice"), lab.client_ns("dave")
    checks = [
        (alice, "alice (eng): curl http://app/ (web)", apps.nginx.curl_argv(app), True),
        (alice, "alice (eng): ssh app 'echo $SSH_CLIENT'", apps.sshd.ssh_argv(app, "echo $SSH_CLIENT"), True),
        (alice, "alice (eng): curl http://app:8080/ (no policy)", apps.nginx.curl_argv(app, 8080), False),
        (
            alice,
            "alice (eng): psql app (dba's database)",
            apps.postgres.psql_argv(app, "select inet_client_addr()"),
            False,
        ),
        (
            dave,
            "dave (dba): psql app 'select inet_client_addr()'",
            apps.postgres.psql_argv(app, "select inet_client_addr()"),
            True,
        ),
        (dave, "dave (dba): curl http://app/ (eng's web)", apps.nginx.curl_argv(app), False),
        ("atk", "internet host: curl http://app/ via the connector", apps.nginx.curl_argv(app), False),
    ]
    return all([attempt(lab, ns, label, argv, ok) for ns, label, argv, ok in checks])


def show_failover(lab: Lab, apps: Apps) -> bool:
    """Cut the serving connector's uplink; alice's next connections go through the other one.
    With SNAT on, the app's answer (the address it sees) names the connector that carried it."""
    t = lab.topo
    lan = {str(t.connector_lan(i)): i for i in (1, 2)}

    def via() -> int | None:
        r = t.run(
            lab.client_ns("alice"), [*apps.nginx.curl_argv(t.app_address), "-m", "1"], check=False, timeout=5
        )
        return lan.get(r.stdout.strip()) if r.returncode == 0 else None

    serving = via()
    if serving is None:
        console.print("  [red]alice does not reach the app before the failover[/]")
        return False
    other = 3 - serving
    console.print(f"  alice reaches the app through cn{serving}; cutting cn{serving}'s uplink")
    t.set_link(f"cn{serving}", t.wan_interface(f"cn{serving}"), up=False)
    started = time.monotonic()
    try:
        while time.monotonic() - started < 15:
            if via() == other:
                took = time.monotonic() - started
                console.print(
                    f"  [green]alice's new connections reach the app through cn{other} after {took:.1f} s[/]"
                )
                return True
            time.sleep(0.1)
        console.print(f"  [red]no failover to cn{other} within 15 s[/]")
        return False
    finally:
        t.set_link(f"cn{serving}", t.wan_interface(f"cn{serving}"), up=True)


def show_flows(lab: Lab) -> bool:
    """The gateway's flow records of the steps above, as ``zerogate admin flows`` lists them."""
    # Forwarded flows are recorded when conntrack forgets them; a listing in the gateway's
    # namespace makes the kernel reap the expired entries it walks over at once.
    expected = {("alice", "web"), ("dave", "db")}
    rows: list[dict[str, object]] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        lab.topo.run("gw", ["conntrack", "-L"], check=False)
        rows = list(lab.admin.get("/v1/flows", {"limit": 1000}))
        allowed = {(r["user"], r["application"]) for r in rows if not r["denied"]}
        if expected <= allowed and any(r["denied"] for r in rows):
            break
        time.sleep(0.5)
    else:
        console.print(
            f"  [red]the flows of alice's web and dave's db did not arrive within 30 s[/] ({len(rows)} records)"
        )
        return False
    console.print(
        f"  {'start (UTC)':<11} {'user':<6} {'destination':<20} {'app':<5} {'decided by':<18} {'bytes out/in':>14}"
    )
    for r in rows[-14:]:
        decided = f"denied: {r['denied']}" if r["denied"] else f"policy {r['policy']}"
        where = f"{r['destination']}:{r['port']}"
        sizes = f"{r['bytes_out']}/{r['bytes_in']}"
        start = str(r["start"])[11:19]
        console.print(
            f"  {start:<11} {r['user'] or '-':<6} {where:<20} {r['application'] or '-':<5} {decided:<18} {sizes:>14}"
        )
    console.print(
        f"  {len(rows)} records; the same with: zerogate admin flows [--user U] [--app A] [--denied] [--json]\n"
        f"  admin portal: {lab.controller.url}/portal/ (admin, password + TOTP; while the demo waits for Enter)"
    )
    return True


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--no-wait", action="store_true", help="tear down at the end even with a terminal attached"
    )
    args = parser.parse_args()
    import os

    if os.geteuid() != 0:
        console.print(
            "[red]The demo builds network namespaces, WireGuard tunnels and nftables rules: run it as root.[/]"
        )
        return 1
    good = False
    step(
        1,
        "Build the topology: namespaces, an internet segment, a private LAN with nginx, OpenSSH, PostgreSQL",
    )
    with Topology(clients=2, connectors=2, attacker=True) as topo:
        apps = start_apps(topo)
        console.print(
            f"  internet {topo.internet}: gateway {topo.gateway_address}, clients {topo.client_address(1)} and "
            f"{topo.client_address(2)}, connector {topo.connector_wan(1)}, internet host {topo.attacker_address}\n"
            f"  LAN {topo.lan}: connectors {topo.connector_lan(1)} and {topo.connector_lan(2)}, app host {topo.app_address} "
            f"(nginx :80 and :8080, sshd :22, PostgreSQL :5432)"
        )
        lab = Lab(topo)
        try:
            step(
                2, "Start the controller and bootstrap the first admin (the demo plays the authenticator app)"
            )
            lab.start_controller()
            console.print(f"  controller at {lab.controller.url}  CA pin {lab.controller.ca_pin}")

            step(3, "Create the organisation")
            lab.create_org()
            console.print(
                f"  connector group 'site' fronts {topo.lan} (SNAT on)\n"
                f"  apps: web = {topo.app_address}:80, ssh = :22, db = :5432\n"
                "  policy eng-apps: group eng -> web, ssh      policy dba-db: group dba -> db\n"
                "  users: alice (eng) on client 1, dave (dba) on client 2"
            )

            step(
                4,
                "Enroll and start the gateway and two connectors (install strings; connectors only dial out)",
            )
            # Flow records (step 8) come when conntrack forgets a flow: after TIME_WAIT, 120 s by
            # default. The demo shortens it on its gateway so they arrive while you watch.
            topo.run("gw", ["sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_timeout_time_wait=1"])
            lab.start_gateway()
            lab.start_connector(1)
            lab.start_connector(2)
            lab.wait_connectors_up(["cn1", "cn2"])
            console.print(
                "  gateway 'edge' is up and probing; connectors 'cn1' and 'cn2' dialled out and answer probes"
            )

            step(5, "Sign the users in on their clients and bring the split tunnels up")
            for user in lab.people:
                lab.client_login(user)
                up = lab.client_up(user)
                console.print(
                    f"  {user}: address {up['address']}, tunnel {up['tunnel']}, routes {', '.join(up['routes'])}, "
                    f"apps {', '.join(up['applications'])}"
                )

            step(6, "Reach what policy allows, and nothing else")
            good = show_access(lab, apps)

            step(7, "Fail over: cut the serving connector's uplink, the gateway moves the group to the other")
            good = show_failover(lab, apps) and good

            step(8, "Flow records: what the gateway forwarded and refused, and which policy decided")
            good = show_flows(lab) and good
            if sys.stdin.isatty() and not args.no_wait:
                console.print(
                    f"\n  Look around, e.g.:  ip netns exec {topo.ns('gw')} nft list table inet zerogate\n"
                    f"                      ip netns exec {topo.ns('gw')} wg show\n"
                    f"                      {lab.controller.url}/portal/ in a browser on this machine\n"
                    "  Press Enter to tear everything down."
                )
                input()
        except (RuntimeError, subprocess.SubprocessError, TimeoutError) as exc:
            console.print(f"[red]demo failed:[/] {exc}")
            for role in ("gw", "cn1", "cn2"):
                console.print(f"[dim]--- {role} log ---\n{lab.log(role)[-2000:]}[/]")
        finally:
            step(9, "Tear down: stop the daemons, delete tunnels and namespaces")
            lab.close()
    console.print("  done: no namespaces, tunnels or processes left behind")
    console.print(
        "\n[bold green]Demo passed.[/]" if good else "\n[bold red]Demo did not behave as expected.[/]"
    )
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
