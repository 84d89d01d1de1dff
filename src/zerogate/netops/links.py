"""Addresses, routes and forwarding on an interface, reconciled to a wanted set.

IPv4 forwarding is a switch for the whole network namespace. The connector
records what it was before zerogate turned it on (``forwarding.json`` in its
state directory) so that it can put it back on a clean stop, and so that a
restart, also after a crash, still knows whether the host forwarded on its own.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from ipaddress import IPv4Network, IPv6Network, ip_interface, ip_network
from pathlib import Path

from zerogate.netops import netns
from zerogate.netops.command import run
from zerogate.netops.files import write_private

log = logging.getLogger(__name__)

IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
FORWARDING_RECORD = "forwarding.json"
_RECORD = re.compile(r'\{"ip_forward_before": ([01])\}\n?')
_DOCKER_CHAIN = re.compile(r"^\s*chain (DOCKER|DOCKER-USER) \{$", re.MULTILINE)


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


def address_changes(
    dev: str, have: Iterable[str], want: Iterable[str]
) -> tuple[list[list[str]], list[list[str]]]:
    """The ``ip`` commands (deletes, adds) that turn ``have`` into ``want`` on ``dev`` (pure)."""
    have_set, want_set = set(have), {str(ip_interface(a)) for a in want}
    deletes = [["addr", "del", a, "dev", dev] for a in sorted(have_set - want_set)]
    adds = [["addr", "add", a, "dev", dev] for a in sorted(want_set - have_set)]
    return deletes, adds


def ensure_addresses(dev: str, wanted: Iterable[str]) -> None:
    want = [str(ip_interface(a)) for a in wanted]
    deletes, adds = address_changes(dev, addresses(dev), want)
    if deletes:
        netns.run_batch(deletes)
        # deleting a primary address also drops its secondaries: plan the adds anew
        _, adds = address_changes(dev, addresses(dev), want)
    netns.run_batch(adds)


def routes(dev: str) -> set[str]:
    """Static (non-kernel) IPv4 routes through ``dev``."""
    out = set()
    for r in _ip_json("-4", "route", "show", "dev", dev):
        if r.get("protocol") == "kernel":
            continue
        dst = str(r["dst"])
        out.add(str(ip_network(dst if dst != "default" else "0.0.0.0/0")))
    return out


def route_changes(
    dev: str, have: Iterable[str], want: Iterable[str]
) -> tuple[list[list[str]], list[list[str]]]:
    """The ``ip`` commands (deletes, replaces) that turn routes ``have`` into ``want`` via ``dev`` (pure)."""
    have_set, want_set = set(have), {str(ip_network(r)) for r in want}
    deletes = [["route", "del", r, "dev", dev] for r in sorted(have_set - want_set)]
    adds = [["route", "replace", r, "dev", dev] for r in sorted(want_set - have_set)]
    return deletes, adds


def ensure_routes(dev: str, wanted: Iterable[str]) -> None:
    deletes, adds = route_changes(dev, routes(dev), wanted)
    try:
        netns.run_batch(deletes, force=True)
    except netns.NetnsError as exc:  # already gone (the kernel drops routes with their address)
        log.debug("some stale routes on %s were already gone: %s", dev, exc)
    netns.run_batch(adds)


def enable_forwarding(proc: Path = IP_FORWARD) -> None:
    """IPv4 forwarding in this network namespace (gateway and connector route packets)."""
    proc.write_text("1\n")


def forwarding_enabled(proc: Path = IP_FORWARD) -> bool:
    value = proc.read_text().strip()
    if not re.fullmatch(r"[01]", value):
        raise ValueError(f"{proc} holds neither 0 nor 1: check the kernel's net.ipv4.ip_forward")
    return value == "1"


def _recorded(record: Path) -> bool | None:
    """The recorded ip_forward, or None without a (readable) record."""
    try:
        text = record.read_text()
    except FileNotFoundError:
        return None
    found = _RECORD.fullmatch(text)
    if found is None:
        log.warning(
            "%s is damaged: ignoring it and taking ip_forward as it is now as the host's own "
            "setting (if this host did not forward before zerogate, stop the connector, set "
            "net.ipv4.ip_forward=0 and start it again)",
            record,
        )
        return None
    return found.group(1) == "1"


def forwarded_before(state_dir: Path, proc: Path = IP_FORWARD) -> bool:
    """Whether this host forwarded IPv4 before zerogate turned forwarding on.

    The first call records the current value in ``state_dir/forwarding.json``
    (0600, atomic). Later calls return the record: after a restart, forwarding
    may be on only because we turned it on. Call it before :func:`enable_forwarding`.
    """
    record = state_dir / FORWARDING_RECORD
    before = _recorded(record)
    if before is None:
        before = forwarding_enabled(proc)
        write_private(record, f'{{"ip_forward_before": {int(before)}}}\n')
    return before


def restore_forwarding(state_dir: Path, proc: Path = IP_FORWARD) -> bool:
    """Put ip_forward back as recorded by :func:`forwarded_before` and delete the record.

    Returns True when it turned forwarding off. Without a (readable) record
    forwarding stays as it is: we cannot know that we turned it on.
    """
    record = state_dir / FORWARDING_RECORD
    before = _recorded(record)
    turned_off = before is False
    if turned_off:
        proc.write_text("0\n")
    record.unlink(missing_ok=True)
    return turned_off


def docker_detected(ruleset: str, interfaces: Iterable[str]) -> bool:
    """Docker forwards for its containers: a ``docker0`` bridge, or its chains
    (DOCKER, DOCKER-USER; iptables-nft shows them in ``nft list ruleset``)."""
    return "docker0" in set(interfaces) or _DOCKER_CHAIN.search(ruleset) is not None


def docker_present() -> bool:
    """:func:`docker_detected` for this network namespace."""
    names = [str(link.get("ifname", "")) for link in _ip_json("link", "show")]
    return docker_detected(run(["nft", "list", "ruleset"]).stdout, names)


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
