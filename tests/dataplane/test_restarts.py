"""The data plane under restarts and outages (issue 9): after a gateway restart
clients reach their apps again within 3 s of the gateway being up, and both
sides say what happened; a connector whose UDP to the gateway is blocked says
so, reports what to check, and comes back by itself once the path is open.

One small deployment for the module: gateway, two connectors, alice's client,
nginx on the LAN.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from tests.dataplane.reach import SURE_TIMEOUT, tcp_connects

from zerogate.testbed.apps import start_nginx
from zerogate.testbed.lab import Lab, wait_for
from zerogate.testbed.topology import Topology

pytestmark = [pytest.mark.xdist_group("restarts"), pytest.mark.slow]

ROLES = ("gw", "cn1", "cn2")
RECOVERY_BOUND = 3.0  # issue 9: gateway up -> clients reach their apps again
BLOCK_TABLE = "zgtest"


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Topology(clients=1, connectors=2, attacker=False) as topo:
        start_nginx(topo)  # only the web app is used here
        lab = Lab(topo)
        try:
            # Lab.deploy() would also sign in dave on a second client: only alice here.
            lab.start_controller()
            lab.create_org()
            lab.start_gateway()
            lab.start_connector(1)
            lab.start_connector(2)
            lab.wait_connectors_up(["cn1", "cn2"])
            lab.client_login("alice")
            lab.client_up("alice")
            yield lab
        finally:
            lab.close()


@pytest.fixture(autouse=True)
def diagnostics_on_failure(request: pytest.FixtureRequest, lab: Lab) -> Iterator[None]:
    yield
    rep = getattr(request.node, "rep_call", None)
    if rep is None or not rep.failed:
        return
    for role in (*ROLES, "cl1"):
        if role != "cl1":
            print(f"--- {role} log (tail) ---\n{lab.log(role)[-4000:]}")
        wg = lab.topo.run(role, ["wg", "show", lab.topo.wg_interface(role)], check=False)
        print(f"--- {role} wg show ---\n{wg.stdout}{wg.stderr}")


def since(lab: Lab, offsets: dict[str, int], role: str) -> str:
    return lab.log(role)[offsets[role] :]


def logged(lab: Lab, offsets: dict[str, int], role: str, text: str) -> Callable[[], bool]:
    return lambda: text in since(lab, offsets, role)


def saved_endpoints(lab: Lab) -> dict[str, Any]:
    try:
        return dict(json.loads((lab.state("gw") / "endpoints.json").read_text()))
    except (FileNotFoundError, ValueError):
        return {}


def test_clients_reach_their_apps_within_3_s_of_a_gateway_restart(lab: Lab) -> None:
    wait_for(lambda: tcp_connects(lab, "alice", 80, SURE_TIMEOUT), 30, "alice reaches the web app")
    wait_for(lambda: len(saved_endpoints(lab)) == 3, 10, "the gateway saved 3 peer endpoints")
    assert (lab.state("gw") / "endpoints.json").stat().st_mode & 0o777 == 0o600
    offsets = {role: len(lab.log(role)) for role in ROLES}
    lab.stop("gw")  # SIGTERM, as systemd stops it
    for cn in ("cn1", "cn2"):  # down long enough for the connectors to notice
        wait_for(logged(lab, offsets, cn, "tunnel to gateway edge is down"), 10, f"{cn} notices")
    lab.restart("gw")
    wait_for(lambda: "applied revision" in since(lab, offsets, "gw"), 30, "the gateway applies its config")
    gateway_up = time.monotonic()
    wait_for(lambda: tcp_connects(lab, "alice", 80, 0.5), 40, "alice reaches the web app again", 0.02)
    took = time.monotonic() - gateway_up
    print(f"\ngateway up -> alice reaches the web app again: {took:.2f} s")
    assert took <= RECOVERY_BOUND, f"alice reached the app {took:.1f} s after the gateway was up"
    gw = since(lab, offsets, "gw")
    assert "restored the endpoints of 3 peers (2 connectors, 1 clients) from the last run" in gw, gw
    for cn in ("cn1", "cn2"):
        wait_for(
            logged(lab, offsets, cn, "tunnel to gateway edge is up again after"),
            10,
            f"{cn} logs its tunnel back up",
        )


def connector_details(lab: Lab, name: str) -> dict[str, Any]:
    devices = lab.admin.get("/v1/devices", {"role": "connector"})
    device = next(d for d in devices if d["name"] == name and d["status"] == "active")
    return dict((device.get("report") or {}).get("details") or {})


def test_a_connector_with_udp_blocked_says_what_to_check_and_recovers(lab: Lab) -> None:
    gateway = lab.admin.get("/v1/gateways/edge")
    ports = f"{gateway['port_first']}-{gateway['port_last']}"
    lab.wait_connectors_up(["cn2"])
    offsets = {role: len(lab.log(role)) for role in ROLES}
    rule = (
        f"table inet {BLOCK_TABLE} {{\n  chain out {{\n"
        "    type filter hook output priority 0; policy accept;\n"
        f"    ip daddr {lab.topo.gateway_address} meta l4proto udp drop\n  }}\n}}\n"
    )
    lab.topo.run("cn2", ["nft", "-f", "-"], input=rule)
    try:
        lab.restart("cn2")
        wait_for(lambda: "is not up after" in since(lab, offsets, "cn2"), 30, "cn2 warns about its tunnel")
        warning = next(line for line in since(lab, offsets, "cn2").splitlines() if "is not up after" in line)
        assert f"UDP port range is {ports}" in warning and "egress firewall" in warning, warning
        wait_for(
            lambda: "connector cn2 has not connected since" in since(lab, offsets, "gw"),
            20,
            "the gateway warns about cn2",
        )

        def reported_down() -> bool:
            d = connector_details(lab, "cn2")
            return d.get("tunnel_up") is False and bool(d.get("tunnel_hint"))

        wait_for(reported_down, 20, "cn2 reports its tunnel down with a hint", 0.5)
        details = connector_details(lab, "cn2")
        assert ports in details["tunnel_hint"], details
        assert details["last_handshake_at"] is None, details  # a new interface: never handshook
    finally:
        lab.topo.run("cn2", ["nft", "delete", "table", "inet", BLOCK_TABLE], check=False)
    wait_for(
        lambda: "tunnel to gateway edge is up" in since(lab, offsets, "cn2"), 15, "cn2 comes back by itself"
    )
    wait_for(lambda: "connector cn2 is up" in since(lab, offsets, "gw"), 10, "the gateway sees cn2 again")

    def reported_up() -> bool:
        d = connector_details(lab, "cn2")
        return (
            d.get("tunnel_up") is True and d.get("tunnel_hint") is None and bool(d.get("last_handshake_at"))
        )

    wait_for(reported_up, 20, "cn2 reports its tunnel up with a handshake time", 0.5)
