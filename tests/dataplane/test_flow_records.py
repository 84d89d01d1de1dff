"""Flow records end to end in namespaces: a real controller, gateway (conntrack
events, the nftables refusal set), connector and client; alice reaches ``web``
with real curl and is refused on a port no policy grants; ``zerogate admin
flows`` then shows both, with user, application, policy and bytes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from zerogate.netops.command import run
from zerogate.testbed.apps import Nginx, start_nginx
from zerogate.testbed.lab import Lab, wait_for
from zerogate.testbed.localrun import zerogate_argv
from zerogate.testbed.topology import Topology

pytestmark = [pytest.mark.xdist_group("dataplane"), pytest.mark.slow]


@pytest.fixture(scope="module")
def env() -> Iterator[tuple[Lab, Nginx, Path]]:
    with Topology(clients=1, connectors=1, attacker=False) as topo:
        nginx = start_nginx(topo)
        lab = Lab(topo)
        try:
            lab.start_controller()
            lab.create_org()
            # A TCP flow's DESTROY event comes after TIME_WAIT (120 s by default); the
            # gateway subtracts it from the end time, the test only shortens the wait.
            topo.run("gw", ["sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_timeout_time_wait=1"])
            lab.start_gateway()
            lab.start_connector(1)
            lab.wait_connectors_up(["cn1"])
            lab.client_login("alice")
            lab.client_up("alice")
            profile = topo.tmp / "admin-profile.json"
            fd = os.open(profile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(
                    {
                        "url": lab.controller.url,
                        "ca_pem": lab.controller.ca_pem.decode(),
                        "username": "admin",
                        "token": lab.admin_token,
                    },
                    f,
                )
            yield lab, nginx, profile
        except BaseException:
            for role in ("gw", "cn1"):
                print(f"--- {role} log ---\n{lab.log(role)[-4000:]}")
            raise
        finally:
            lab.close()


def admin_flows(profile: Path, *args: str) -> list[dict[str, Any]]:
    """``zerogate admin flows --json ARGS`` as the lab's admin, from the host."""
    out = run([*zerogate_argv(), "admin", "--profile", str(profile), "flows", "--json", *args], timeout=30)
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def test_allowed_and_refused_flows_are_recorded(env: tuple[Lab, Nginx, Path]) -> None:
    lab, nginx, profile = env
    ns = lab.client_ns("alice")
    ok = lab.topo.run(ns, nginx.curl_argv(lab.topo.app_address, 80), check=False, timeout=20)
    assert ok.returncode == 0, ok.stderr
    refused = lab.topo.run(ns, nginx.curl_argv(lab.topo.app_address, 8080), check=False, timeout=20)
    assert refused.returncode != 0
    app = str(lab.topo.app_address)

    def allowed() -> list[dict[str, Any]]:
        # The kernel's garbage collector reaps an expired entry (and so sends its DESTROY
        # event) when it gets to it, up to a minute or more later; a conntrack listing in
        # the gateway's namespace reaps the expired ones it walks over at once.
        lab.topo.run("gw", ["conntrack", "-L"], check=False)
        return [r for r in admin_flows(profile, "--user", "alice", "--app", "web") if r["port"] == 80]

    wait_for(lambda: bool(allowed()), 30, f"alice's web flow in admin flows:\n{lab.log('gw')[-3000:]}")
    flow = allowed()[0]
    assert (flow["user"], flow["application"], flow["policy"]) == ("alice", "web", "eng-apps")
    assert (flow["destination"], flow["protocol"], flow["denied"]) == (app, "tcp", None)
    assert flow["device_id"] == lab.device_id("alice")
    assert flow["bytes_out"] > 0 and flow["bytes_in"] > 0
    assert flow["bytes_in"] > len(ok.stdout)  # the reply carried the page
    assert 0 <= flow["duration"] < 10  # TIME_WAIT is not counted as the flow's time

    def denied() -> list[dict[str, Any]]:
        return [r for r in admin_flows(profile, "--denied", "--user", "alice") if r["port"] == 8080]

    wait_for(lambda: bool(denied()), 30, "alice's refused flow in admin flows --denied")
    no = denied()[0]
    assert (no["destination"], no["protocol"], no["denied"], no["policy"]) == (app, "tcp", "no-policy", None)
    assert no["packets_out"] >= 1 and no["bytes_in"] == 0
    # --denied shows refusals only; without it both kinds come back
    assert all(r["denied"] for r in admin_flows(profile, "--denied"))
    assert {r["port"] for r in admin_flows(profile, "--user", "alice")} >= {80, 8080}
