"""Address and route reconciliation, and the local-network listing, on real
interfaces (veth pairs) inside a network namespace this test creates; the
record of the host's own IPv4 forwarding (temp files, then a namespace).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from ipaddress import ip_network
from pathlib import Path

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


# --------------------------------------------------------------------------- forwarding


@pytest.fixture
def proc(tmp_path: Path) -> Path:
    """Stands for /proc/sys/net/ipv4/ip_forward."""
    path = tmp_path / "ip_forward"
    path.write_text("0\n")
    return path


def test_the_first_start_records_forwarding_off_and_a_restart_still_knows_it(
    tmp_path: Path, proc: Path
) -> None:
    assert links.forwarded_before(tmp_path, proc) is False
    record = tmp_path / links.FORWARDING_RECORD
    assert record.stat().st_mode & 0o777 == 0o600
    links.enable_forwarding(proc)
    # a restart (after a crash: the record is still there) with forwarding on because we turned it on
    assert links.forwarded_before(tmp_path, proc) is False
    assert links.restore_forwarding(tmp_path, proc) is True
    assert proc.read_text() == "0\n" and not record.exists()
    assert links.restore_forwarding(tmp_path, proc) is False  # a second stop changes nothing


def test_a_host_that_forwarded_before_keeps_forwarding_after_a_stop(tmp_path: Path, proc: Path) -> None:
    proc.write_text("1\n")
    assert links.forwarded_before(tmp_path, proc) is True
    assert links.restore_forwarding(tmp_path, proc) is False
    assert proc.read_text() == "1\n" and not (tmp_path / links.FORWARDING_RECORD).exists()


def test_a_damaged_record_is_replaced_and_never_turns_forwarding_off(
    tmp_path: Path, proc: Path, caplog: pytest.LogCaptureFixture
) -> None:
    record = tmp_path / links.FORWARDING_RECORD
    record.write_text('{"ip_forward_before": 0, "x": 1}')
    proc.write_text("1\n")
    assert links.restore_forwarding(tmp_path, proc) is False  # unknown: leave the host as it is
    assert proc.read_text() == "1\n" and not record.exists()
    record.write_text("garbage")
    assert links.forwarded_before(tmp_path, proc) is True
    assert record.read_text() == '{"ip_forward_before": 1}\n'
    assert f"{record} is damaged" in caplog.text and "garbage" not in caplog.text
    proc.write_text("2\n")
    with pytest.raises(ValueError, match="holds neither 0 nor 1"):
        links.forwarding_enabled(proc)


@pytest.mark.parametrize(
    ("ruleset", "interfaces", "found"),
    [
        ("", ["lo", "eth0"], False),
        ("", ["lo", "docker0"], True),
        ("table ip filter {\n\tchain DOCKER-USER {\n\t\treturn\n\t}\n}\n", ["lo"], True),
        ("table ip nat {\n\tchain DOCKER {\n\t}\n}\n", ["lo"], True),
        ('table inet x {\n\tchain DOCKERISH {\n\t}\n\tcomment "chain DOCKER {"\n}\n', ["docker1"], False),
    ],
    ids=["none", "docker0", "docker-user-chain", "docker-chain", "look-alikes"],
)
def test_docker_is_detected_by_its_bridge_or_its_chains(
    ruleset: str, interfaces: list[str], found: bool
) -> None:
    assert links.docker_detected(ruleset, interfaces) is found


def test_forwarding_is_recorded_turned_on_and_put_back_in_a_namespace(ns: Netns, tmp_path: Path) -> None:
    root_before = links.IP_FORWARD.read_text()
    ns.run("sysctl", "-qw", "net.ipv4.ip_forward=0")
    assert ns.call(lambda: links.forwarded_before(tmp_path)) is False
    ns.call(links.enable_forwarding)
    assert ns.run("sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "1"
    assert ns.call(lambda: links.forwarded_before(tmp_path)) is False  # a restart: still strict
    assert ns.call(lambda: links.restore_forwarding(tmp_path)) is True
    assert ns.run("sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "0"
    assert links.IP_FORWARD.read_text() == root_before  # the test's own namespace is untouched


@pytest.mark.skipif(shutil.which("nft") is None, reason="needs the Debian package nftables")
def test_a_namespace_that_forwarded_or_runs_docker_is_seen_as_such(ns: Netns, tmp_path: Path) -> None:
    ns.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
    assert ns.call(lambda: links.forwarded_before(tmp_path)) is True
    assert ns.call(links.docker_present) is False
    ns.run("nft", "add table ip filter; add chain ip filter DOCKER-USER")  # what iptables-nft makes
    assert ns.call(links.docker_present) is True
    ns.run("nft", "delete table ip filter")
    ns.ip("link", "add", "docker0", "type", "bridge")
    assert ns.call(links.docker_present) is True
    assert ns.call(lambda: links.restore_forwarding(tmp_path)) is False
    assert ns.run("sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "1"


def test_changes_are_planned_as_ip_batch_commands_deletes_first() -> None:
    deletes, adds = links.address_changes(
        "zg-cn", {"10.9.0.1/24", "10.8.0.1/24"}, ["10.9.0.1/24", "10.7.0.1"]
    )
    assert deletes == [["addr", "del", "10.8.0.1/24", "dev", "zg-cn"]]
    assert adds == [["addr", "add", "10.7.0.1/32", "dev", "zg-cn"]]
    deletes, adds = links.route_changes(
        "zg-cn", {"10.1.0.0/24", "10.3.0.0/24"}, ["10.1.0.0/24", "10.2.0.0/23"]
    )
    assert deletes == [["route", "del", "10.3.0.0/24", "dev", "zg-cn"]]
    assert adds == [["route", "replace", "10.2.0.0/23", "dev", "zg-cn"]]
    assert links.route_changes("zg-cn", {"10.1.0.0/24"}, ["10.1.0.0/24"]) == ([], [])
