"""The VRRP agent with a real keepalived in test namespaces: a unicast pair elects
one master, tells the "gateway" (a UDP socket on the state port) and repeats it;
a lost tunnel puts the master in FAULT and the VIP moves; the supervisor restarts
a killed keepalived, reloads a changed config, and stops it when the VIP goes.

Each agent runs in a thread that joined its namespace, so the ``ip`` it runs and
the keepalived it starts live there."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from nstools import Netns
from zerogate.connector.vrrp import CONF_NAME, PID_NAME, STATE_NAME, VrrpOptions
from zerogate.connector.vrrp_agent import VrrpAgent
from zerogate.model.vrrp import STATE_PORT, VrrpState, decode
from zerogate.testbed.lab import wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, keepalived)")

VIP = IPv4Address("10.253.0.100")
TUNNEL = IPv4Address("10.252.0.1")  # the connector's tunnel address, on lo here
GATEWAY = IPv4Address("10.252.0.9")  # the gateway's tunnel address, a socket on lo here
_libc = ctypes.CDLL(None, use_errno=True)


@dataclass
class Node:
    ns: Netns
    lan: str
    agent: VrrpAgent
    inbox: socket.socket
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    heard: list[VrrpState] = field(default_factory=list)

    def start(self) -> None:
        ready = threading.Event()

        def body() -> None:
            fd = os.open(f"/run/netns/{self.ns.name}", os.O_RDONLY)
            try:
                assert _libc.setns(fd, 0x40000000) == 0, "setns"
            finally:
                os.close(fd)
            self.configure()
            ready.set()
            self.agent.run(self.stop)

        self.thread = threading.Thread(target=body, name=f"agent-{self.ns.name}", daemon=True)
        self.thread.start()
        assert ready.wait(20), "agent configured"

    def configure(self) -> None:  # in the namespace's thread: it runs 'ip -j addr'
        self.agent.configure("site", VIP, TUNNEL, (GATEWAY,))

    def in_ns(self, fn: Callable[[], object]) -> None:
        self.ns.call(fn)

    def holds_vip(self) -> bool:
        return f" {VIP}/" in self.ns.ip("-br", "-4", "addr", "show", "dev", self.lan)

    def receive(self) -> list[VrrpState]:
        while True:
            try:
                data, source = self.inbox.recvfrom(512)
            except BlockingIOError:
                return self.heard
            assert source[0] == str(TUNNEL), "the state comes from the tunnel address"
            self.heard.append(decode(data))

    def keepalived_pid(self) -> int | None:
        try:
            return int((self.agent.state_dir / PID_NAME).read_text())
        except (OSError, ValueError):
            return None

    def close(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(15)
        self.agent.shutdown()
        self.inbox.close()


@pytest.fixture
def make_node(make_netns: Callable[[str], Netns], tmp_path: Path) -> Iterator[Callable[..., Node]]:
    nodes: list[Node] = []

    def make(n: int, peer: int | None = None, link: str | None = None, **options: object) -> Node:
        ns = make_netns(f"zvc{n}")
        lan = link or f"zvc{os.getpid() % 100000}{n}"
        ns.ip("addr", "add", f"{TUNNEL}/32", "dev", "lo")
        ns.ip("addr", "add", f"{GATEWAY}/32", "dev", "lo")
        inbox = ns.call(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        inbox.bind((str(GATEWAY), STATE_PORT))
        inbox.setblocking(False)
        peers = (IPv4Address(f"10.253.0.{peer}"),) if peer else ()
        opts = VrrpOptions(peers=peers, **options)  # type: ignore[arg-type]
        node = Node(ns, lan, VrrpAgent(tmp_path / f"n{n}", opts), inbox)
        node.agent.state_dir.mkdir(mode=0o700)
        nodes.append(node)
        return node

    try:
        yield make
    finally:
        for node in nodes:
            node.close()
        for node in nodes:
            assert node.keepalived_pid() is None or not Path(f"/proc/{node.keepalived_pid()}").exists()


def _link(a: Node, b: Node) -> None:
    a.ns.ip("link", "add", a.lan, "type", "veth", "peer", "name", b.lan, "netns", b.ns.name)
    for node, n in ((a, 1), (b, 2)):
        node.ns.ip("addr", "add", f"10.253.0.{n}/24", "dev", node.lan)
        node.ns.ip("link", "set", node.lan, "up")


def test_unicast_pair_elects_one_master_and_tells_the_gateway(make_node: Callable[..., Node]) -> None:
    a, b = make_node(1, peer=2, advert_interval=0.1), make_node(2, peer=1, advert_interval=0.1)
    _link(a, b)
    for node in (a, b):
        node.start()
        node.agent.set_tunnel(True)
    wait_for(lambda: a.holds_vip() != b.holds_vip(), 20, "exactly one of the pair holds the VIP")
    master, backup = (a, b) if a.holds_vip() else (b, a)
    conf = (master.agent.state_dir / CONF_NAME).read_text()
    assert "unicast_peer {" in conf and "vrrp_instance zg_site {" in conf

    def repeated() -> bool:
        claims = [s for s in master.receive() if s.state == "master"]
        return len(claims) >= 2 and len({c.seq for c in claims}) == 1

    wait_for(repeated, 10, "the master claim arrives and is repeated with the same seq")
    # every transition was told (FAULT until the tunnel was up, BACKUP, MASTER), in order
    states = [s.state for s in master.heard]
    assert states[: states.index("master")] in (["fault", "backup"], ["backup"]), states
    assert [s.seq for s in master.heard] == sorted(s.seq for s in master.heard)
    assert master.heard[-1] == VrrpState("site", "master", master.heard[-1].seq)
    assert all(s.state != "master" for s in backup.receive())
    report = master.agent.report()
    assert report is not None and report["state"] == "master" and report["virtual_ip"] == str(VIP)
    recorded = json.loads((master.agent.state_dir / STATE_NAME).read_text())
    assert recorded["state"] == "MASTER" and recorded["interface"] == master.lan

    # the master loses its tunnel: FAULT, the VIP moves, the gateway hears both
    seq = master.heard[-1].seq
    master.agent.set_tunnel(False)
    wait_for(lambda: backup.holds_vip() and not master.holds_vip(), 10, "the VIP moves to the backup")
    wait_for(lambda: any(s.state == "fault" and s.seq > seq for s in master.receive()), 5, "fault sent")
    wait_for(lambda: any(s.state == "master" for s in backup.receive()), 5, "new master claims")


def test_supervisor_restarts_reloads_and_stops_keepalived(
    make_node: Callable[..., Node], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="zerogate.connector.vrrp_agent")
    node = make_node(1, link=f"zvcd{os.getpid() % 100000}")
    node.ns.ip("link", "add", node.lan, "type", "veth", "peer", "name", node.lan + "p")
    node.ns.ip("link", "set", node.lan + "p", "up")
    node.ns.ip("addr", "add", "10.253.0.1/24", "dev", node.lan)
    node.ns.ip("link", "set", node.lan, "up")
    node.start()
    node.agent.set_tunnel(True)
    wait_for(node.holds_vip, 20, "a lone connector becomes master")
    first = node.keepalived_pid()
    assert first is not None

    os.kill(first, signal.SIGKILL)  # keepalived crashes (a process this test's agent started)
    wait_for(lambda: node.keepalived_pid() not in (None, first), 20, "keepalived restarted")
    wait_for(node.holds_vip, 20, "master again after the restart")
    assert "keepalived exited" in caplog.text

    # a changed setting: same process, new config, reloaded
    pid = node.keepalived_pid()
    node.agent.options = VrrpOptions(priority=150)
    node.in_ns(node.configure)
    conf = node.agent.state_dir / CONF_NAME
    wait_for(lambda: "    priority 150\n" in conf.read_text(), 10, "config rewritten")
    assert "reloading" in caplog.text and node.keepalived_pid() == pid

    # the group loses its VIP: keepalived stops and releases it
    node.agent.release()
    wait_for(lambda: not node.holds_vip(), 10, "VIP released")
    assert pid is not None and not Path(f"/proc/{pid}").exists()
    assert node.agent.report() is None


def test_master_link_flap_ends_with_one_master(
    make_node: Callable[..., Node], make_netns: Callable[[str], Netns]
) -> None:
    """The master's LAN link goes down and comes back: the backup takes over, and
    after the link returns exactly one of them is master (no split brain)."""
    a, b = make_node(1, advert_interval=0.2), make_node(2, advert_interval=0.2)
    lan = make_netns("zvcl")  # a switch: one port going down leaves the other up
    lan.ip("link", "add", "zvcbr", "type", "bridge")
    lan.ip("link", "set", "zvcbr", "up")
    for node, n in ((a, 1), (b, 2)):
        node.ns.ip("link", "add", node.lan, "type", "veth", "peer", "name", f"zvcp{n}", "netns", lan.name)
        lan.ip("link", "set", f"zvcp{n}", "master", "zvcbr")
        lan.ip("link", "set", f"zvcp{n}", "up")
        node.ns.ip("addr", "add", f"10.253.0.{n}/24", "dev", node.lan)
        node.ns.ip("link", "set", node.lan, "up")
    for node in (a, b):
        node.start()
        node.agent.set_tunnel(True)
    wait_for(lambda: a.holds_vip() != b.holds_vip(), 20, "exactly one of the pair holds the VIP")
    master, backup = (a, b) if a.holds_vip() else (b, a)
    master.ns.ip("link", "set", master.lan, "down")
    wait_for(backup.holds_vip, 10, "the backup takes the VIP")
    master.ns.ip("link", "set", master.lan, "up")

    def settled() -> bool:
        states = sorted((a.agent.state, b.agent.state))
        return states == ["BACKUP", "MASTER"] and a.holds_vip() != b.holds_vip()

    wait_for(settled, 10, "one master, one backup after the flap")
    # ... and it stays so (a negative: watched for 15 advertisement intervals)
    until = time.monotonic() + 3.0
    while time.monotonic() < until:
        assert settled(), (a.agent.state, b.agent.state, a.holds_vip(), b.holds_vip())
        time.sleep(0.05)
