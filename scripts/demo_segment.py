"""The segment part of the local demo (`make demo` runs it after `scripts/demo.py`):
a Linux host is learned, protected, and still serves its learned client while
an unlearned connection is refused. Nothing is installed on the host.

Steps, each printed as it runs:
  1. build a fleet in network namespaces: one Linux host running real nginx
     (ports 80 and 8080) and OpenSSH with a dedicated account, two clients
     (A will be learned, B not) and the segment server's namespace
  2. start the controller and a segment server: enroll it with an install
     string (it keeps its SSH key pair) and run it; it dials out only
  3. add the host; compare the key the server saw with the host's own; trust it
  4. learn: client A fetches the page; the server reads conntrack over SSH
  5. review the proposed rule and its evidence; approve it
  6. protect: enforce on the host, commit-confirmed (rollback armed on the host,
     checked over a fresh SSH login, then confirmed)
  7. client A is still served; client B and the unlearned port are refused;
     the segment server still logs in; the host's `nft` table
  8. unprotect: the table goes, client B is served again
  9. tear everything down (processes by PID, namespaces, the fleet's account)

Needs root (namespaces, nftables, a throwaway account). With a terminal attached
it waits for Enter after step 7, so you can look at the protected host;
otherwise it finishes by itself. Exits non-zero if any check went wrong.
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from zerogate.netops import netns
from zerogate.netops.controller_api import ControllerError
from zerogate.testbed.apps import HTTP_PORT, OTHER_HTTP_PORT, Nginx
from zerogate.testbed.segmentlab import SegmentLab, host_key_fingerprint, start_host_nginx
from zerogate.testbed.sshhosts import SERVER_ADDRESS, SshFleet, SshHost, client_address

console = Console(highlight=False, soft_wrap=True)
STEPS = 9
ASSET = "web-1"
FETCHES = 3  # client A's requests while the host learns


def step(n: int, text: str) -> None:
    console.print(f"\n[bold cyan][{n}/{STEPS}][/] [bold]{text}[/]")


def mark(good: bool) -> str:
    return "[green]as policy says[/]" if good else "[bold red]WRONG[/]"


def check(label: str, good: bool, detail: str = "") -> bool:
    """A check that is not a connection attempt (keys, rules, tables)."""
    console.print(f"  {label:<58} {mark(good)}   [dim]{escape(detail[:90])}[/]")
    return good


def attempt(fleet: SshFleet, ns: str, label: str, argv: list[str], expect_ok: bool) -> bool:
    """Run a real client command in a namespace and say whether it did what policy says."""
    started = time.monotonic()
    r = fleet.run(ns, argv, check=False, timeout=20)
    took = (time.monotonic() - started) * 1000
    ok = r.returncode == 0
    lines = (r.stdout.strip() or r.stderr.strip()).splitlines()
    shown = lines[-1] if lines else ""
    verdict = "[green]reached[/]" if ok else "[red]refused[/]"
    console.print(
        f"  {label:<48} {verdict} in {took:5.0f} ms  {mark(ok == expect_ok)}   [dim]{escape(shown[:70])}[/]"
    )
    return ok == expect_ok


def ssh_argv(fleet: SshFleet, host: SshHost, user: str, command: str) -> list[str]:
    """The segment server's own login (its key, the account), as a management check."""
    return ["ssh", "-F", "/dev/null", "-i", str(fleet.key), "-o", "IdentitiesOnly=yes",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
            "-o", "ConnectTimeout=3", "-o", "LogLevel=ERROR", f"{user}@{host.address}", command]  # fmt: skip


def clock(stamp: str) -> str:
    return datetime.fromisoformat(stamp).strftime("%H:%M:%S")


def show_rule(rule: dict[str, Any]) -> None:
    first, last = rule["port_first"], rule["port_last"]
    ports = str(first) if first == last else f"{first}-{last}"
    ev = rule["evidence"]
    evidence = "none"
    if ev:
        evidence = (
            f"{ev['connections']} connection(s) in {ev['flows']} flow record(s) from {ev['peers']} peer(s), "
            f"seen {clock(ev['first_seen'])}-{clock(ev['last_seen'])}"
        )
    console.print(
        f"  rule {rule['id']}: {rule['action']} {rule['protocol']}/{ports} from {', '.join(rule['sources'])}"
        f"  [dim]evidence: {evidence}[/]"
    )


class SegmentDemo:
    """Steps 2 to 8 against one fleet; ``good`` turns False at the first WRONG."""

    def __init__(self, fleet: SshFleet, tmp: Path, nginx: Nginx) -> None:
        self.fleet, self.nginx = fleet, nginx
        self.host = fleet.hosts[0]
        assert fleet.user is not None
        self.user = fleet.user
        self.lab = SegmentLab(fleet, tmp, server_name="seg1")
        self.a, self.b = fleet.client_ns(0), fleet.client_ns(1)
        self.good = True

    def note(self, good: bool) -> None:
        self.good = self.good and good

    def asset(self) -> dict[str, Any]:
        return self.lab.api.asset(ASSET)

    def start(self) -> None:
        step(2, "Start the controller and a segment server (enrolled with an install string; it dials out)")
        lab = self.lab
        lab.start_controller()
        console.print(f"  controller at {lab.controller.url}  CA pin {lab.controller.ca_pin}")
        enrolled = lab.enroll_server(user=self.user)
        said = " ".join(enrolled.split("On every asset")[0].split()).rstrip(":")
        console.print(f"  zerogate segment enroll: [dim]{escape(said)}[/]")
        sudoers = enrolled.strip().splitlines()[-1] if enrolled.strip() else ""
        console.print(f"  sudoers line for the host's account: [dim]{escape(sudoers)}[/]")
        lab.start_server()
        assert lab.server.process is not None
        console.print(
            f"  zerogate segment run (PID {lab.server.process.pid}) in {self.fleet.server_ns}, "
            f"reaching the controller through a relay on 127.0.0.1:{lab.controller.port}"
        )

    def onboard(self) -> None:
        step(3, "Add the host, check the key the server saw against the host's own, trust it")
        api, lab = self.lab.api, self.lab
        api.add_asset(ASSET, str(self.host.address), server=lab.server_name, ssh_user=self.user)
        console.print(f"  asset {ASSET}: {self.host.address}, SSH as {self.user}, served by seg1")
        lab.wait("the offered host key", lambda: bool(self.asset()["observed_host_key_fingerprint"]))
        seen = self.asset()
        on_host = host_key_fingerprint(self.fleet, self.host)
        console.print(f"  the server saw {seen['observed_host_key_fingerprint']} (state {seen['state']})")
        console.print(f"  on the host:   {on_host}  [dim](ssh-keygen -l of its host key)[/]")
        self.note(
            check(
                "the key the server saw is the host's own", seen["observed_host_key_fingerprint"] == on_host
            )
        )
        api.trust(ASSET, seen["observed_host_key_fingerprint"])
        lab.wait("the first contact", lambda: self.asset()["state"] == "ready")
        ready = self.asset()
        failed = [p.get("name", "?") for p in ready["preflight"] if not p.get("ok", True)]
        console.print(
            f"  trusted and pinned; first contact: preflight {'ok' if not failed else 'warns: ' + ', '.join(failed)}"
            f", sshd on TCP {', '.join(str(p) for p in ready['ssh_ports'])}"
        )

    def learn(self) -> None:
        step(4, f"Learn: client A fetches the page {FETCHES} times; the server reads conntrack over SSH")
        api, lab = self.lab.api, self.lab
        api.set_mode(ASSET, "learning", window_seconds=3600)
        lab.wait("learning", lambda: self.asset()["state"] == "learning")
        url_argv = self.nginx.curl_argv(self.host.address)
        for i in range(1, FETCHES + 1):
            self.note(attempt(self.fleet, self.a, f"client A: curl http://{ASSET}/ ({i})", url_argv, True))
        peer_a = str(client_address(0))

        def learned() -> bool:
            return any(f["port"] == HTTP_PORT and f["peer"] == peer_a for f in api.flows(ASSET))

        took = lab.wait("the learned flow", learned)
        console.print(f"  learned flows ({took:.1f} s later):")
        for f in api.flows(ASSET):
            console.print(
                f"    {f['direction']:<8} {f['protocol']}/{f['port']:<5} peer {f['peer']:<14} "
                f"{f['count']} connection(s), {clock(f['first_seen'])}-{clock(f['last_seen'])}"
                f"{'  process ' + f['process'] if f['process'] else ''}"
            )

    def review(self) -> None:
        step(5, "Review: the proposed rules with their evidence; approve the web rule")
        api = self.lab.api
        proposal = api.propose(ASSET)
        for rule in proposal["proposed"]:
            show_rule(rule)
        if proposal["warning"]:
            console.print(f"  [yellow]{proposal['warning']}[/]")
        web = [r for r in proposal["proposed"] if r["port_first"] <= HTTP_PORT <= r["port_last"]]
        peer_a, peer_b = f"{client_address(0)}/32", f"{client_address(1)}/32"
        self.note(
            check(
                "a rule for web, from client A only",
                len(web) == 1 and web[0]["sources"] == [peer_a] and peer_b not in web[0]["sources"],
                f"sources {web[0]['sources'] if web else []}",
            )
        )
        self.note(
            check(
                f"no rule for port {OTHER_HTTP_PORT} (never used)",
                not any(r["port_first"] <= OTHER_HTTP_PORT <= r["port_last"] for r in proposal["proposed"]),
            )
        )
        for rule in web:
            api.approve(ASSET, rule["id"])
            console.print(f"  approved rule {rule['id']}")
        for rule in proposal["proposed"]:
            if rule not in web:
                console.print(
                    f"  left proposed: rule {rule['id']} ({rule['protocol']}/{rule['port_first']}; the segment"
                    " server's SSH passes the table's management rules anyway)"
                    if rule["port_first"] == 22 and rule["sources"] == [f"{SERVER_ADDRESS}/32"]
                    else f"  left proposed: rule {rule['id']} ({rule['protocol']}/{rule['port_first']})"
                )

    def protect(self) -> None:
        step(6, "Protect: enforce on the host, commit-confirmed (rollback armed there, fresh SSH check)")
        api, lab = self.lab.api, self.lab
        api.set_mode(ASSET, "protected")
        took = lab.wait("enforcement", lambda: self.asset()["state"] == "enforced", timeout=90)
        done = self.asset()
        console.print(
            f"  enforced in {took:.1f} s (from the API call until the controller showed it): {escape(done['detail'])}"
        )
        self.note(
            check(
                "the host enforces the approved rules' revision",
                done["enforced_revision"] == done["rules_revision"],
                f"enforced {done['enforced_revision']}, rules {done['rules_revision']}",
            )
        )

    def show_enforced(self, wait: bool) -> None:
        step(7, "The host still serves what it learned, and nothing else")
        h, f = self.host, self.fleet
        checks = [
            (self.a, f"client A: curl http://{ASSET}/ (learned)", self.nginx.curl_argv(h.address), True),
            (self.a, f"client A: curl http://{ASSET}:{OTHER_HTTP_PORT}/ (not learned)",
             self.nginx.curl_argv(h.address, OTHER_HTTP_PORT), False),
            (self.b, f"client B: curl http://{ASSET}/ (not learned)", self.nginx.curl_argv(h.address), False),
            (f.server_ns, "segment server: ssh (management, always open)",
             ssh_argv(f, h, self.user, "echo $SSH_CLIENT"), True),
        ]  # fmt: skip
        self.note(all([attempt(f, ns, label, argv, ok) for ns, label, argv, ok in checks]))
        table = f.nft(h, "list", "table", "inet", "zerogate_segment")
        self.note(check(f"nft list table inet zerogate_segment on {ASSET}", table.returncode == 0))
        console.print(table.stdout.rstrip(), style="dim", markup=False)
        if wait:
            console.print(
                f"\n  Look around, e.g.:  ip netns exec {h.ns} nft list table inet zerogate_segment\n"
                f"                      ip netns exec {self.b} curl -m 3 http://{h.address}/\n"
                "  Press Enter to unprotect the host and tear everything down."
            )
            input()

    def unprotect(self) -> None:
        step(8, "Unprotect: one action; the table goes and every client is served again")
        self.lab.api.unprotect(ASSET)
        took = self.lab.wait("unprotect", lambda: self.asset()["state"] == "ready")
        console.print(f"  unprotected in {took:.1f} s")
        gone = self.fleet.nft(self.host, "list", "table", "inet", "zerogate_segment").returncode != 0
        self.note(check("no zerogate_segment table left on the host", gone))
        argv = self.nginx.curl_argv(self.host.address)
        self.note(attempt(self.fleet, self.b, f"client B: curl http://{ASSET}/", argv, True))

    def log_tail(self) -> str:
        return self.lab.server.log_tail(2000)


def run(wait: bool) -> bool:
    step(1, "Build the fleet: a Linux host with real nginx and OpenSSH, two clients, the segment server")
    tmp = Path(tempfile.mkdtemp(prefix="zerogate-segdemo-"))
    fleet = SshFleet(1, tmp / "fleet", clients=2, sudo_user=True)
    nginx: Nginx | None = None
    demo: SegmentDemo | None = None
    good = False
    try:
        fleet.start()
        host = fleet.hosts[0]
        nginx = start_host_nginx(fleet, host)
        console.print(
            f"  host {ASSET} ({host.ns}): {host.address}, nginx :{HTTP_PORT} and :{OTHER_HTTP_PORT}, sshd :22,"
            f" account {fleet.user} with exactly the segment sudoers line\n"
            f"  client A {client_address(0)} (will be learned), client B {client_address(1)} (will not)\n"
            f"  segment server's side {SERVER_ADDRESS} ({fleet.server_ns})"
        )
        demo = SegmentDemo(fleet, tmp, nginx)
        demo.start()
        demo.onboard()
        demo.learn()
        demo.review()
        demo.protect()
        demo.show_enforced(wait)
        demo.unprotect()
        good = demo.good
    except (RuntimeError, subprocess.SubprocessError, TimeoutError, ControllerError, OSError) as exc:
        console.print(f"[red]demo failed:[/] {escape(str(exc))}")
        if demo is not None:
            console.print(f"--- segment server log ---\n{demo.log_tail()}", style="dim", markup=False)
    finally:
        step(9, "Tear down: the segment server, the controller and nginx by PID; namespaces; the account")
        processes = [p for p in (demo.lab.server.process, demo.lab.controller.process) if p] if demo else []
        if demo is not None:
            demo.lab.close()
        if nginx is not None:
            processes.append(nginx.process)
            nginx.process.terminate()
            nginx.process.wait(10)
        account = fleet.user
        fleet.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return _nothing_left(fleet.prefix, account, processes) and good


def _nothing_left(prefix: str, account: str | None, processes: list[subprocess.Popen[bytes]]) -> bool:
    namespaces = [ns for ns in netns.list_namespaces() if ns.startswith(prefix)]
    running = [p.pid for p in processes if p.poll() is None]
    try:
        pwd.getpwnam(account or prefix)
        account_left = True
    except KeyError:
        account_left = False
    left = [*(f"namespace {ns}" for ns in namespaces), *(f"PID {pid}" for pid in running)]
    left += [f"account {account}"] if account_left else []
    return check("no namespaces, processes or account left behind", not left, ", ".join(left))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--no-wait", action="store_true", help="tear down at the end even with a terminal attached"
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        console.print(
            "[red]The segment demo builds network namespaces, nftables tables and an account: run it as root.[/]"
        )
        return 1
    good = run(sys.stdin.isatty() and not args.no_wait)
    console.print(
        "\n[bold green]Segment demo passed.[/]"
        if good
        else "\n[bold red]Segment demo did not behave as expected.[/]"
    )
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
