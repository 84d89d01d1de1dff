"""The data plane through a controller outage (issue 9): the controller stops
cleanly (long-polls answered "controller going away", no tracebacks, under
1 s), the gateway and connector keep forwarding on their last config, and a
revocation made right after the controller is back is enforced within 2 s,
however long it was down.

One small deployment for the module: gateway, one connector, alice's client,
nginx on the LAN.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from tests.dataplane.reach import SURE_TIMEOUT, assert_cut_within, tcp_connects

from zerogate.testbed.apps import start_nginx
from zerogate.testbed.lab import Lab, wait_for
from zerogate.testbed.topology import Topology

pytestmark = [pytest.mark.xdist_group("controller_outage"), pytest.mark.slow]

# Long enough that a backoff doubling from 0.5 s to 30 s would sleep for 8 s
# more after the controller returns (0.5+1+2+4 = 7.5 s of waits, then an 8 s one).
DOWN_SECONDS = 8.0
ROLES = ("gw", "cn1")


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Topology(clients=1, connectors=1, attacker=False) as topo:
        start_nginx(topo)
        lab = Lab(topo)
        try:
            # Lab.deploy() would also sign in dave on a second client: only alice here.
            lab.start_controller()
            lab.create_org()
            lab.start_gateway()
            lab.start_connector(1)
            lab.wait_connectors_up(["cn1"])
            lab.client_login("alice")
            lab.client_up("alice")
            yield lab
        except BaseException:
            print_logs(lab)
            raise
        finally:
            lab.close()


def print_logs(lab: Lab) -> None:
    for role in ROLES:
        print(f"--- {role} log (tail) ---\n{lab.log(role)[-3000:]}")
    if hasattr(lab, "controller"):
        print(f"--- controller log (tail) ---\n{lab.controller.output()[-3000:]}")


def test_revocation_right_after_a_controller_outage_is_enforced_within_2_s(lab: Lab) -> None:
    wait_for(lambda: tcp_connects(lab, "alice", 80, SURE_TIMEOUT), 30, "alice reaches the web app")
    offsets = {role: len(lab.log(role)) for role in ROLES}
    controller_offset = len(lab.controller.output())
    try:
        stopping = time.monotonic()
        lab.stop_controller()
        stop_took = time.monotonic() - stopping
        stopped_log = lab.controller.output()[controller_offset:]
        wait_for(lambda: "controller unreachable" in lab.log("gw")[offsets["gw"] :], 10, "gw notices")
        # The outage itself: nothing to wait for but time passing.
        time.sleep(max(0.0, DOWN_SECONDS - (time.monotonic() - stopping)))
        assert tcp_connects(lab, "alice", 80, SURE_TIMEOUT), "fail-static: forwarding stopped"
        lab.restart_controller()
        device = lab.device_id("alice")
        took = assert_cut_within(
            lab,
            "alice",
            80,
            lambda: lab.admin.post(f"/v1/devices/{device}/revoke"),
            "revocation after restart",
        )
        new = {role: lab.log(role)[offsets[role] :] for role in ROLES}
        assert "connected to the controller" in new["gw"], "the gateway did not log its reconnect"
        for role in ROLES:
            assert "controller going away" in new[role], f"{role} did not log the controller going away"
            assert "HTTP 500" not in new[role], f"{role} saw an HTTP 500 while the controller stopped"
        assert "Traceback" not in stopped_log, stopped_log
        assert stop_took < 1.0, f"stopping the controller took {stop_took:.2f} s:\n{stopped_log}"
    except BaseException:
        print_logs(lab)
        raise
    print(f"\ncontroller stopped in {stop_took * 1000:.0f} ms; down {DOWN_SECONDS:.0f} s; revocation right")
    print(f"after the restart cut traffic within {took:.2f} s")
