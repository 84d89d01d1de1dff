"""The segment server's host side against real hosts: sshd, nftables and conntrack
in network namespaces (:class:`zerogate.testbed.sshhosts.SshFleet`), the server
code run in the fleet's server namespace, clients in another one.

Learn from real traffic (conntrack snapshots, and events that catch the short
connections snapshots miss), enforce and see learned flows pass while an unlearned
connection is refused, a table that cuts SSH roll back at once, a killed server
leave the host to roll itself back, break-glass remove our table only, a changed
host key stop everything, and the same through ``sudo -n`` for a non-root login.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from zerogate.deploy.firewall.errors import CheckFailedRolledBack
from zerogate.model.snapshot import SegmentAsset
from zerogate.netops import netns
from zerogate.segment import hosts
from zerogate.segment.breakglass import break_glass_from_inventory, save_inventory
from zerogate.segment.checks import tcp_connects
from zerogate.segment.daemon import SshHostOps
from zerogate.segment.events import EventLedger
from zerogate.segment.ssh import Access, HostKeyChanged
from zerogate.testbed.lab import wait_for
from zerogate.testbed.sshhosts import SERVER_ADDRESS, SshFleet, SshHost, call_in_netns, client_address

pytestmark = [
    pytest.mark.xdist_group("segment-hosts"),
    pytest.mark.skipif(
        os.geteuid() != 0
        or not all(
            shutil.which(t) for t in ("ip", "nft", "conntrack", "ss", "ssh", "ssh-keyscan", "sudo", "setsid")
        )
        or not Path("/usr/sbin/sshd").exists(),
        reason="needs root, iproute2, nftables, conntrack, openssh (client and server), sudo and setsid",
    ),
]

SERVED, UNLEARNED = 8080, 9090
OTHER_TABLE = "table inet othertool {\n  chain input {\n    type filter hook input priority 10; policy accept;\n    counter\n  }\n}\n"  # fmt: skip


class Site:
    """One fleet plus the servers each test starts on its hosts (stopped by PID)."""

    def __init__(self, fleet: SshFleet, tmp: Path) -> None:
        self.fleet = fleet
        self.access = Access(fleet.key, tmp / "state", remote_dir=str(tmp / "on-host"))
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def host(self) -> SshHost:
        return self.fleet.hosts[0]

    def serve(self, host: SshHost, port: int) -> None:
        """A small HTTP server on the host, awaited until a connection from the host itself works."""
        argv = [sys.executable, "-m", "http.server", str(port), "--bind", str(host.address)]
        proc = subprocess.Popen(
            ["ip", "netns", "exec", host.ns, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.procs.append(proc)
        wait_for(
            lambda: call_in_netns(host.ns, lambda: tcp_connects(host.address, port, 1.0)), 15, "the server"
        )

    def client_connects(self, host: SshHost, port: int) -> bool:
        return call_in_netns(self.fleet.client_ns(), lambda: tcp_connects(host.address, port, 1.0))

    def table(self, host: SshHost, name: str = "zerogate_segment") -> str | None:
        r = self.fleet.nft(host, "-s", "list", "table", "inet", name)
        return r.stdout if r.returncode == 0 else None

    def asset(self, host: SshHost, user: str = "root", **fields: Any) -> SegmentAsset:
        return host.asset(user=user, **fields)

    def protected(self, host: SshHost, user: str = "root", revision: int = 2) -> SegmentAsset:
        rule = {"rule_id": 1, "action": "accept", "protocol": "tcp", "port_first": SERVED, "port_last": SERVED,
                "sources": [f"{client_address(0)}/32", f"{SERVER_ADDRESS}/32"]}  # fmt: skip
        return host.asset(user=user, mode="protected", rules_revision=revision, rules=[rule])

    def enforce(self, asset: SegmentAsset, **kwargs: Any) -> hosts.Enforcement:
        return self.fleet.call(lambda: hosts.enforce(asset, self.access, [SERVER_ADDRESS], **kwargs))

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)


@contextlib.contextmanager
def make_site(tmp_path: Path, **fleet_args: Any) -> Iterator[Site]:
    with SshFleet(1, tmp_path / "fleet", **fleet_args) as fleet:
        site = Site(fleet, tmp_path)
        try:
            yield site
        except BaseException:
            print(fleet.logs())
            raise
        finally:
            site.close()


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    with make_site(tmp_path) as s:
        yield s


def test_onboarding_scan_and_preflight(site: Site) -> None:
    scanned = site.fleet.call(lambda: hosts.scan_host_key(site.asset(site.host, host_key=None)))
    assert scanned.key == site.host.host_key and scanned.fingerprint.startswith("SHA256:")
    pf = site.fleet.call(lambda: hosts.preflight(site.asset(site.host), site.access))
    assert pf.ok and pf.ssh_ports == (22,)
    found = {i.name: i for i in pf.items}
    assert found["nftables"].ok and found["conntrack"].ok and found["sshd_ports"].detail.endswith("TCP 22")


def test_learning_collects_the_flows_clients_made(site: Site) -> None:
    asset = site.asset(site.host, mode="learning")
    site.fleet.call(lambda: hosts.start_learning(asset, site.access))
    assert site.table(site.host, "zerogate_learn") is not None
    site.serve(site.host, SERVED)
    site.serve(site.host, UNLEARNED)
    assert site.client_connects(site.host, SERVED)

    got = site.fleet.call(lambda: hosts.collect(asset, site.access))
    inbound = {(f.protocol, f.port, str(f.peer)) for f in got.flows}
    assert ("tcp", SERVED, str(client_address(0))) in inbound
    assert ("tcp", 22, str(SERVER_ADDRESS)) in inbound  # the collecting session itself
    assert not any(f.port == UNLEARNED for f in got.flows)
    served = next(f for f in got.flows if f.port == SERVED)
    assert served.process and served.direction == "inbound"
    assert {li.port for li in got.listeners} >= {22, SERVED, UNLEARNED}

    site.fleet.call(lambda: hosts.stop_learning(asset, site.access))
    assert site.table(site.host, "zerogate_learn") is None


def subscribed(site: Site, host: SshHost) -> bool:
    """Whether something in the host listens to conntrack events (a netfilter netlink
    socket, protocol 12, in multicast groups)."""
    table = site.fleet.run(host.ns, ["cat", "/proc/net/netlink"]).stdout.splitlines()[1:]
    return any(row[1] == "12" and int(row[3], 16) != 0 for row in (line.split() for line in table))


def short_connections(site: Site, host: SshHost, port: int, n: int) -> None:
    """``n`` connections from the client that open, close and leave no conntrack entry
    behind: what a short connection between two snapshots looks like to them."""
    for _ in range(n):
        assert site.client_connects(host, port)

    def closed() -> bool:  # no packet of theirs comes after the entries go
        return not site.fleet.run(
            host.ns, ["ss", "-Htn", "state", "connected", f"sport = :{port}"]
        ).stdout.strip()

    wait_for(closed, 20, "the connections to close")
    site.fleet.run(host.ns, ["conntrack", "-D", "-p", "tcp", "--dport", str(port)], check=False)
    left = site.fleet.run(host.ns, ["conntrack", "-L", "-p", "tcp", "--dport", str(port)], check=False)
    assert "dport=" not in left.stdout


def conntrack_pids(host: SshHost) -> list[int]:
    """The conntrack processes in the host's namespace (by PID, nothing outside it)."""
    found = []
    for pid in netns.namespace_pids(host.ns):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().strip() == "conntrack":
                found.append(pid)
    return found


def announced(ledger: EventLedger, after: int, n: int) -> Callable[[], bool]:
    return lambda: ledger.received >= after + n


def test_events_catch_the_short_connections_that_snapshots_miss(site: Site) -> None:
    asset = site.asset(site.host, mode="learning")
    ops = SshHostOps(site.access)
    assert ops.streams is not None
    site.serve(site.host, SERVED)
    try:
        site.fleet.call(lambda: ops.start_learning(asset))  # the table, then the event session
        assert site.table(site.host, "zerogate_learn") is not None
        wait_for(lambda: subscribed(site, site.host), 20, "the event stream to subscribe")
        site.fleet.call(lambda: ops.collect(asset, False))  # a snapshot: the window starts
        ledger = ops.streams.ledger(asset.asset_id)
        assert ledger is not None
        before = ledger.received
        short_connections(site, site.host, SERVED, 3)
        wait_for(announced(ledger, before, 3), 20, "their events")

        got = site.fleet.call(lambda: ops.collect(asset, False))
        served = [(f.peer, f.count, f.process is not None) for f in got.flows if f.port == SERVED]
        assert served == [(client_address(0), 3, True)]  # each counted once, with its process
        assert (got.events_dropped, got.event_overflows) == (0, 0)

        # the snapshot alone does not see such connections
        short_connections(site, site.host, SERVED, 2)
        alone = site.fleet.call(lambda: hosts.collect(asset, site.access))
        assert not [f for f in alone.flows if f.port == SERVED]
        assert [f.port for f in alone.flows] == [22]  # the collecting session itself

        # leaving learning ends the host's conntrack -E, then the table goes
        site.fleet.call(lambda: ops.stop_learning(asset))
        wait_for(lambda: not subscribed(site, site.host), 20, "conntrack -E to stop on the host")
        assert site.table(site.host, "zerogate_learn") is None and ops.streams.ledger(asset.asset_id) is None
    finally:
        ops.retain(frozenset())


def test_the_event_session_comes_back_after_it_dies(site: Site) -> None:
    asset = site.asset(site.host, mode="learning")
    ops = SshHostOps(site.access)
    assert ops.streams is not None
    try:
        site.fleet.call(lambda: ops.start_learning(asset))
        wait_for(lambda: subscribed(site, site.host), 20, "the event stream to subscribe")
        stream = ops.streams.stream(asset.asset_id)
        assert stream is not None and stream.sessions == 1
        (pid,) = conntrack_pids(site.host)
        os.kill(pid, signal.SIGKILL)  # the host's conntrack dies under the session
        wait_for(lambda: stream.sessions == 2, 30, "a new session")
        wait_for(lambda: subscribed(site, site.host), 20, "the new session to subscribe")
    finally:
        ops.retain(frozenset())
    wait_for(lambda: not subscribed(site, site.host), 20, "conntrack -E to stop on the host")


def test_enforce_keeps_learned_flows_and_refuses_the_rest(site: Site) -> None:
    site.serve(site.host, SERVED)
    site.serve(site.host, UNLEARNED)
    result = site.enforce(site.protected(site.host))
    assert result.outcome == "applied"
    assert f"TCP {SERVED} still answer" in result.detail  # the server tested the approved service
    assert "policy drop" in (site.table(site.host) or "")
    assert site.client_connects(site.host, SERVED)
    assert not site.client_connects(site.host, UNLEARNED)
    # SSH from the server still works (a fresh session), and nothing is left armed
    assert site.fleet.call(lambda: hosts.preflight(site.asset(site.host), site.access)).ok
    assert not list((site.access.state_dir / "targets").glob("*/pending.json"))
    # back to monitored: the table goes
    assert site.enforce(site.asset(site.host, rules_revision=3)).outcome == "removed"
    assert site.table(site.host) is None and site.client_connects(site.host, UNLEARNED)


def test_a_table_that_cuts_ssh_rolls_back_at_once(site: Site) -> None:
    site.fleet.nft(site.host, "-f", "-")  # no-op; the host has no table yet
    before = site.fleet.nft(site.host, "list", "ruleset").stdout
    with pytest.raises(CheckFailedRolledBack, match="rolled back"):
        site.enforce(site.protected(site.host), ssh_ports=[2222], listeners=[], check_timeout=2)
    assert site.fleet.nft(site.host, "list", "ruleset").stdout == before
    assert site.fleet.call(lambda: hosts.preflight(site.asset(site.host), site.access)).ok


def descendants(root: int) -> list[int]:
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                parent[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
    found, frontier = [], [root]
    while frontier:
        frontier = [pid for pid, ppid in parent.items() if ppid in frontier]
        found += frontier
    return found


KILLED_ENFORCE = """
import ipaddress, sys
from pathlib import Path
from zerogate.model.snapshot import SegmentAsset
from zerogate.segment.hosts import enforce
from zerogate.segment.ssh import Access
asset = SegmentAsset.model_validate_json(sys.argv[1])
access = Access(Path(sys.argv[2]), Path(sys.argv[3]), remote_dir=sys.argv[4] or None)
enforce(asset, access, [ipaddress.ip_address(sys.argv[5])], ssh_ports=[2222], listeners=[], check_timeout=3)
"""


def killed_mid_window(site: Site, asset: SegmentAsset) -> None:
    """Start an enforcement that cuts SSH in another process, SIGKILL it once the table is
    live, and see the host restore the previous state by itself."""
    before = site.fleet.nft(site.host, "list", "ruleset").stdout
    argv = ["ip", "netns", "exec", site.fleet.server_ns, sys.executable, "-c", KILLED_ENFORCE,
            asset.model_dump_json(), str(site.access.identity), str(site.access.state_dir),
            site.access.remote_dir or "", str(SERVER_ADDRESS)]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    children: list[int] = []
    try:
        wait_for(
            lambda: site.table(site.host) is not None or proc.poll() is not None, 30, "the table to go live"
        )
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        live = time.monotonic()
        children = descendants(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_for(
            lambda: site.fleet.nft(site.host, "list", "ruleset").stdout == before, 40, "the host's rollback"
        )
        assert time.monotonic() - live < 3 + 10 + 5  # check timeout + the SSH target's grace + slack
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert site.fleet.call(
        lambda: hosts.preflight(site.asset(site.host, user=asset.ssh_user), site.access)
    ).ok


def test_the_host_rolls_back_by_itself_when_the_server_dies_mid_window(site: Site) -> None:
    killed_mid_window(site, site.protected(site.host))


def test_break_glass_removes_our_table_only(site: Site, tmp_path: Path) -> None:
    assert site.fleet.run(site.host.ns, ["nft", "-f", "-"], input=OTHER_TABLE).returncode == 0
    other = site.table(site.host, "othertool")
    asset = site.protected(site.host)
    site.enforce(asset)
    assert site.table(site.host) is not None
    inventory = tmp_path / "inventory.json"
    save_inventory(inventory, [asset])
    for _ in range(2):  # idempotent
        results = site.fleet.call(lambda: break_glass_from_inventory(inventory, site.access))
        assert [(r.name, r.ok) for r in results] == [(asset.name, True)], results
        assert site.table(site.host) is None
        assert site.table(site.host, "othertool") == other


def test_a_changed_host_key_stops_management_and_changes_nothing(site: Site, tmp_path: Path) -> None:
    other = tmp_path / "other_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    wrong = " ".join(other.with_suffix(".pub").read_text().split()[:2])
    asset = site.protected(site.host).model_copy(update={"host_key": wrong})
    before = site.fleet.nft(site.host, "list", "ruleset").stdout
    with pytest.raises(HostKeyChanged, match="different SSH host key"):
        site.enforce(asset)
    with pytest.raises(HostKeyChanged):
        site.enforce(asset, ssh_ports=[22], listeners=[])
    assert site.fleet.nft(site.host, "list", "ruleset").stdout == before
    assert site.access.known_hosts(asset).read_text().split()[1:] == wrong.split()  # never re-pinned


def test_a_non_root_login_works_through_sudo(tmp_path: Path) -> None:
    with make_site(tmp_path, sudo_user=True) as site:
        user = site.fleet.user
        assert user is not None
        site.access = Access(site.fleet.key, tmp_path / "state")  # files below the login's home
        site.serve(site.host, SERVED)
        site.serve(site.host, UNLEARNED)
        asset = site.protected(site.host, user=user)
        pf = site.fleet.call(lambda: hosts.preflight(asset, site.access))
        assert pf.ok and pf.ssh_ports == (22,)
        # the event stream through sudo -n, with exactly the argv the sudoers line grants
        learning, ops = site.asset(site.host, user=user, mode="learning"), SshHostOps(site.access)
        assert ops.streams is not None
        try:
            site.fleet.call(lambda: ops.start_learning(learning))
            wait_for(lambda: subscribed(site, site.host), 20, "the event stream to subscribe through sudo")
            ledger = ops.streams.ledger(learning.asset_id)
            assert ledger is not None
            before = ledger.received
            assert site.client_connects(site.host, SERVED)
            wait_for(announced(ledger, before, 1), 20, "the event")
            site.fleet.call(lambda: ops.stop_learning(learning))
            wait_for(lambda: not subscribed(site, site.host), 20, "conntrack -E to stop on the host")
        finally:
            ops.retain(frozenset())
        assert site.enforce(asset).outcome == "applied"
        assert site.client_connects(site.host, SERVED) and not site.client_connects(site.host, UNLEARNED)
        site.fleet.call(lambda: hosts.unprotect(asset, site.access))
        assert site.table(site.host) is None
        # the rollback armed on the host fires with the login's sudo rights only
        killed_mid_window(site, site.protected(site.host, user=user, revision=3))
