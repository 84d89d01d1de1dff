"""The VRRP state receiver on real sockets, in network namespaces of its own.

A "gateway" namespace has a tunnel-like interface (a veth to a "connectors"
namespace that holds the connectors' and a client's tunnel addresses) and a
WAN interface (a veth to an "outside" namespace). The receiver must read
only datagrams that arrive on the tunnel interface, and the claim book must
accept only a connector's claim for its own group.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from nstools import call_in_netns, sh
from zerogate.gateway.claims import ClaimBook, ClaimReceiver, Verdict
from zerogate.model.snapshot import ConnectorEntry
from zerogate.model.vrrp import MAX_BYTES, STATE_PORT, VrrpState, encode
from zerogate.testbed.lab import wait_for

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and iproute2"
)

GW_TUNNEL, GW_WAN, OUTSIDE = "100.64.0.1", "192.0.2.1", "192.0.2.2"
CN_A, CN_B, CLIENT = "100.64.255.10", "100.64.255.11", "100.64.0.2"
CONNECTORS = [
    ConnectorEntry(
        name=name,
        device_id=n,
        wg_public_key=f"{n:0>43}=",
        address=address,
        connector_group=group,
        subnets=(),
    )
    for name, n, address, group in (("cn-a", 10, CN_A, "site"), ("cn-b", 11, CN_B, "cloud"))
]


@dataclass
class Net:
    gw: str
    cn: str
    out: str
    tunnel_if: str
    wan_if: str
    made: list[str] = field(default_factory=list)


@pytest.fixture
def net() -> Iterator[Net]:
    """Three namespaces and two veth pairs, named zvg<pid><hex>...; all removed afterwards."""
    tag = f"zvg{os.getpid() % 100000}{secrets.token_hex(2)}"
    n = Net(f"{tag}gw", f"{tag}cn", f"{tag}out", f"{tag}t", f"{tag}w")
    try:
        for ns in (n.gw, n.cn, n.out):
            sh("ip", "netns", "add", ns)
            n.made.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        for ifname, other_ns in ((n.tunnel_if, n.cn), (n.wan_if, n.out)):
            sh(
                "ip",
                "-n",
                n.gw,
                "link",
                "add",
                ifname,
                "type",
                "veth",
                "peer",
                "name",
                "p",
                "netns",
                other_ns,
            )
            sh("ip", "-n", n.gw, "link", "set", ifname, "up")
            sh("ip", "-n", other_ns, "link", "set", "p", "up")
        # no reverse-path filter: a spoofed packet must reach the UDP layer for the test to mean anything
        sh("ip", "netns", "exec", n.gw, "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0")
        sh("ip", "netns", "exec", n.gw, "sysctl", "-qw", f"net.ipv4.conf.{n.wan_if}.rp_filter=0")
        sh("ip", "-n", n.gw, "addr", "add", f"{GW_WAN}/24", "dev", n.wan_if)
        for address in (CN_A, CN_B, CLIENT):
            sh("ip", "-n", n.cn, "addr", "add", f"{address}/16", "dev", "p")
        sh("ip", "-n", n.out, "addr", "add", f"{OUTSIDE}/24", "dev", "p")
        sh("ip", "-n", n.out, "addr", "add", f"{CN_A}/32", "dev", "p")  # the attacker claims cn-a's address
        sh("ip", "-n", n.out, "route", "add", f"{GW_TUNNEL}/32", "via", GW_WAN)
        yield n
    finally:
        for ns in n.made:
            sh("ip", "netns", "del", ns, check=False)  # deletes its veth ends, and their peers


def sender(ns: str, source: str) -> Callable[[bytes], None]:
    """Send datagrams from ``source`` in namespace ``ns`` to the gateway's tunnel address."""
    sock: socket.socket = call_in_netns(ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    sock.bind((source, 0))

    def send(data: bytes) -> None:
        sock.sendto(data, (GW_TUNNEL, STATE_PORT))

    return send


def udp_no_ports(ns: str) -> int:
    """How many datagrams reached UDP in ``ns`` and found no socket to take them."""
    for line in sh("ip", "netns", "exec", ns, "nstat", "-az", "UdpNoPorts").stdout.splitlines():
        if line.startswith("UdpNoPorts"):
            return int(line.split()[1])
    raise AssertionError("nstat printed no UdpNoPorts")


def test_only_a_connectors_claim_for_its_own_group_through_the_tunnel_is_accepted(net: Net) -> None:
    book = ClaimBook()
    seen: list[tuple[str, Verdict]] = []
    lock = threading.Lock()

    def handle(source: str, data: bytes) -> None:
        with lock:
            seen.append((source, book.offer(source, data, CONNECTORS, 1.0)[0]))

    addresses: list[str] = []  # the snapshot's tunnel addresses as the daemon would give them
    receiver = ClaimReceiver(net.tunnel_if, lambda: list(addresses), handle)
    stop = threading.Event()
    thread = threading.Thread(target=call_in_netns, args=(net.gw, lambda: receiver.run(stop)), daemon=True)
    thread.start()
    try:
        addresses.append(GW_TUNNEL)
        # the interface has no such address yet: the receiver waits, then binds once it has
        wait_for(lambda: GW_TUNNEL in receiver._failed, 5, "a bind attempt before the address exists")
        assert not receiver.bound.is_set()
        sh("ip", "-n", net.gw, "addr", "add", f"{GW_TUNNEL}/16", "dev", net.tunnel_if)
        wait_for(receiver.bound.is_set, 5, "the receiver bound once the address exists")

        # spoofed: cn-a's address, but from the WAN side; it reaches UDP and no socket takes it
        before = udp_no_ports(net.gw)
        spoof = sender(net.out, CN_A)
        spoof(encode(VrrpState("site", "master", 1)))
        wait_for(lambda: udp_no_ports(net.gw) > before, 5, "the spoofed datagram reaching the gateway")

        from_a, from_b, from_client = sender(net.cn, CN_A), sender(net.cn, CN_B), sender(net.cn, CLIENT)
        from_client(encode(VrrpState("site", "master", 1)))  # a client is no connector
        from_b(encode(VrrpState("site", "master", 1)))  # cn-b is in group cloud
        from_a(b"\x00garbage\xff")
        from_a(b"{" + b" " * MAX_BYTES + b"}")  # valid JSON, one byte too long
        from_a(b"x" * 4000)
        from_a(encode(VrrpState("site", "master", 7)))
        wait_for(lambda: (CN_A, Verdict.NEW_MASTER) in seen, 5, "cn-a's claim")
        with lock:
            assert seen == [
                (CLIENT, Verdict.UNKNOWN_SOURCE),
                (CN_B, Verdict.OTHER_GROUP),
                (CN_A, Verdict.MALFORMED),
                (CN_A, Verdict.OVERSIZED),
                (CN_A, Verdict.OVERSIZED),
                (CN_A, Verdict.NEW_MASTER),
            ]
        assert {g: c.connector for g, c in book.masters(1.0).items()} == {"site": "cn-a"}

        # the address goes away (the snapshot changed): the socket is closed
        addresses.clear()
        wait_for(lambda: not receiver.bound.is_set(), 5, "the receiver letting go of the old address")
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive() and receiver.sockets == {}
