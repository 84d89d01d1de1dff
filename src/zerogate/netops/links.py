"""Addresses, routes and forwarding on an interface, reconciled to a wanted set."""

from __future__ import annotations

import json
from collections.abc import Iterable
from ipaddress import IPv4Network, IPv6Network, ip_interface, ip_network
from pathlib import Path

from zerogate.netops.command import run


def _ip_json(*args: str) -> list[dict[str, object]]:
    r = run(["ip", "-j", *args])
    data = json.loads(r.stdout or "[]")
    return data if isinstance(data, list) else []


def addresses(dev: str) -> set[str]:
    """IPv4 addresses on ``dev`` as 'a.b.c.d/len'."""
    out = set()
    for link in _ip_json("-4", "addr", "show", "dev", dev):
        for a in link.get("addr_info", []):  # type: ignore[attr-defined]
            out.add(f"{a['local']}/{a['prefixlen']}")
    return out


def ensure_addresses(dev: str, wanted: Iterable[str]) -> None:
    want = {str(ip_interface(a)) for a in wanted}
    have = addresses(dev)
    for a in sorted(have - want):
        run(["ip", "addr", "del", a, "dev", dev])
    if have - want:
        have = addresses(dev)  # deleting a primary address also drops its secondaries
    for a in sorted(want - have):
        run(["ip", "addr", "add", a, "dev", dev])


def routes(dev: str) -> set[str]:
    """Static (non-kernel) IPv4 routes through ``dev``."""
    out = set()
    for r in _ip_json("-4", "route", "show", "dev", dev):
        if r.get("protocol") == "kernel":
            continue
        dst = str(r["dst"])
        out.add(str(ip_network(dst if dst != "default" else "0.0.0.0/0")))
    return out


def ensure_routes(dev: str, wanted: Iterable[str]) -> None:
    want = {str(ip_network(r)) for r in wanted}
    have = routes(dev)
    for r in sorted(have - want):
        run(["ip", "route", "del", r, "dev", dev], check=False)
    for r in sorted(want - have):
        run(["ip", "route", "replace", r, "dev", dev])


def enable_forwarding() -> None:
    """IPv4 forwarding in this network namespace (gateway and connector route packets)."""
    Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")


def local_networks(exclude: Iterable[str] = ()) -> list[IPv4Network | IPv6Network]:
    """The networks this host is attached to (for address-pool collision checks)."""
    skip = set(exclude) | {"lo"}
    nets: set[IPv4Network | IPv6Network] = set()
    for link in _ip_json("addr", "show"):
        if link.get("ifname") in skip:
            continue
        for a in link.get("addr_info", []):  # type: ignore[attr-defined]
            if a.get("scope") == "global":
                nets.add(ip_interface(f"{a['local']}/{a['prefixlen']}").network)
    for r in _ip_json("-4", "route", "show"):
        dst = str(r.get("dst", ""))
        if r.get("dev") in skip or dst in ("", "default"):
            continue
        nets.add(ip_network(dst, strict=False))
    return sorted(nets, key=str)
