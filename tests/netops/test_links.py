"""Address and route reconciliation, and the local-network listing, on real
interfaces (veth pairs) inside a network namespace this test creates.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from ipaddress import ip_network

import pytest

from nstools import Netns
from zerogate.netops import links

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")


@pytest.fixture
def ns(make_netns: Callable[[str], Netns]) -> Netns:
    """A namespace with two veth pairs, all up: zgd0/zgp0 and zgd1/zgp1."""
    n = make_netns("ln")
    for dev, peer in (("zgd0", "zgp0"), ("zgd1", "zgp1")):
        n.ip("link", "add", dev, "type", "veth", "peer", "name", peer)
        n.ip("link", "set", dev, "up")
        n.ip("link", "set", peer, "up")
    return n


def kernel_routes(ns: Netns, dev: str) -> set[str]:
    shown = json.loads(ns.ip("-j", "-4", "route", "show", "dev", dev))
    return {r["dst"] for r in shown if r.get("protocol") == "kernel"}


def test_ensure_addresses_adds_the_missing_and_removes_the_extra(ns: Netns) -> None:
    ns.call(lambda: links.ensure_addresses("zgd0", ["10.50.0.1/24", "10.51.0.1/32"]))
    assert ns.call(lambda: links.addresses("zgd0")) == {"10.50.0.1/24", "10.51.0.1/32"}
    ns.ip("addr", "add", "10.53.0.1/16", "dev", "zgd0")  # something left over
    ns.call(lambda: links.ensure_addresses("zgd0", ["10.50.0.1/24", "10.52.0.1/16"]))
    assert ns.call(lambda: links.addresses("zgd0")) == {"10.50.0.1/24", "10.52.0.1/16"}
    ns.call(lambda: links.ensure_addresses("zgd0", ["10.50.0.1/24", "10.52.0.1/16"]))  # nothing to do
    assert ns.call(lambda: links.addresses("zgd0")) == {"10.50.0.1/24", "10.52.0.1/16"}
    assert ns.call(lambda: links.addresses("zgd1")) == set()  # other interfaces are not touched
    ns.call(lambda: links.ensure_addresses("zgd0", []))
    assert ns.call(lambda: links.addresses("zgd0")) == set()


def test_ensure_addresses_keeps_a_wanted_address_that_shares_a_subnet_with_a_removed_one(ns: Netns) -> None:
    ns.call(lambda: links.ensure_addresses("zgd0", ["10.50.0.1/24", "10.50.0.2/24"]))
    assert ns.call(lambda: links.addresses("zgd0")) == {"10.50.0.1/24", "10.50.0.2/24"}
    ns.call(lambda: links.ensure_addresses("zgd0", ["10.50.0.2/24"]))
    assert ns.call(lambda: links.addresses("zgd0")) == {"10.50.0.2/24"}


def test_ensure_addresses_accepts_a_bare_address_as_a_host_address(ns: Netns) -> None:
    ns.call(lambda: links.ensure_addresses("zgd0", ["100.64.255.1"]))
    assert ns.call(lambda: links.addresses("zgd0")) == {"100.64.255.1/32"}


def test_ensure_routes_reconciles_static_routes_and_keeps_kernel_routes(ns: Netns) -> None:
    ns.call(lambda: links.ensure_addresses("zgd0", ["10.50.0.1/24"]))
    assert kernel_routes(ns, "zgd0") == {"10.50.0.0/24"}
    ns.call(lambda: links.ensure_routes("zgd0", ["10.60.0.0/16", "10.61.0.5/32"]))
    assert ns.call(lambda: links.routes("zgd0")) == {"10.60.0.0/16", "10.61.0.5/32"}
    ns.ip("route", "add", "10.70.0.0/16", "dev", "zgd0")  # not wanted: goes
    ns.ip("route", "add", "10.71.0.0/16", "dev", "zgd1")  # another interface: stays
    ns.call(lambda: links.ensure_routes("zgd0", ["10.61.0.5", "0.0.0.0/0"]))
    assert ns.call(lambda: links.routes("zgd0")) == {"10.61.0.5/32", "0.0.0.0/0"}
    assert kernel_routes(ns, "zgd0") == {"10.50.0.0/24"}
    assert "10.71.0.0/16" in ns.ip("-4", "route", "show", "dev", "zgd1")
    ns.call(lambda: links.ensure_routes("zgd0", []))
    assert ns.call(lambda: links.routes("zgd0")) == set()
    assert kernel_routes(ns, "zgd0") == {"10.50.0.0/24"}


def test_local_networks_lists_this_namespace_and_skips_the_excluded_interface(ns: Netns) -> None:
    ns.ip("addr", "add", "10.50.0.1/24", "dev", "zgd0")
    ns.ip("addr", "add", "fd00:50::1/64", "dev", "zgd0", "nodad")
    ns.ip("route", "add", "172.21.0.0/16", "dev", "zgd0")
    ns.ip("route", "add", "default", "dev", "zgd0")
    ns.ip("addr", "add", "100.64.0.2/32", "dev", "zgd1")  # stands for the tunnel interface
    ns.ip("route", "add", "10.1.0.0/24", "dev", "zgd1")
    got = ns.call(lambda: links.local_networks(exclude=["zgd1"]))
    assert got == sorted(
        [ip_network("10.50.0.0/24"), ip_network("172.21.0.0/16"), ip_network("fd00:50::/64")], key=str
    )
    everything = ns.call(links.local_networks)
    assert ip_network("100.64.0.2/32") in everything and ip_network("10.1.0.0/24") in everything
    # loopback (127.0.0.0/8, ::1) and link-local fe80::/64 are never listed
    assert all(not (n.is_loopback or n.is_link_local) for n in everything)
