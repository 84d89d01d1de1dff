"""End to end in network namespaces: real controller, gateway, connectors and
clients (the ``zerogate`` command in each namespace), real WireGuard
(wireguard-go), real nftables, and real nginx / OpenSSH / PostgreSQL reached
with real curl / ssh / psql.

The tests share one deployment and run in order (one xdist group); each leaves
the deployment as it found it unless it is one of the destructive tests at the end.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from tests.dataplane.reach import address, assert_cut_within, ensure_reaches, serving_connector
from tests.dbaccess import run_sql

from zerogate.testbed.apps import Apps, start_apps
from zerogate.testbed.lab import Lab, wait_for
from zerogate.testbed.topology import Topology

pytestmark = [pytest.mark.xdist_group("dataplane"), pytest.mark.slow]


# The tests that have used the current env, in order: printed after a failure,
# since later tests build on what earlier ones left (users disabled, devices revoked).
RAN: list[str] = []


@pytest.fixture(scope="module")
def env() -> Iterator[tuple[Lab, Apps]]:
    RAN.clear()
    with Topology(clients=2, connectors=2, attacker=True) as topo:
        apps = start_apps(topo)
        lab = Lab(topo)
        try:
            lab.deploy(connectors=2)
            yield lab, apps
        except BaseException:
            for role in ("gw", "cn1", "cn2"):
                print(f"--- {role} log ---\n{lab.log(role)[-4000:]}")
            raise
        finally:
            lab.close()


@pytest.fixture(autouse=True)
def diagnostics_on_failure(request: pytest.FixtureRequest, env: tuple[Lab, Apps]) -> Iterator[None]:
    """After a failed test, print what the daemons logged and what the gateway and connectors hold."""
    RAN.append(request.node.name)
    yield
    rep = getattr(request.node, "rep_call", None)
    if rep is None or not rep.failed:
        return
    lab, _ = env
    print(f"--- tests run in this env ({lab.topo.prefix}), in order ---\n" + "\n".join(RAN))
    for role in ("gw", "cn1", "cn2"):
        print(f"--- {role} log (tail) ---\n{lab.log(role)[-3000:]}")
        wg = lab.topo.run(role, ["wg", "show", lab.topo.wg_interface(role)], check=False)
        print(f"--- {role} wg show ---\n{wg.stdout}{wg.stderr}")
    for user in ("alice", "dave"):
        ns = lab.client_ns(user)
        wg = lab.topo.run(ns, ["wg", "show", lab.topo.wg_interface(ns)], check=False)
        routes = lab.topo.run(ns, ["ip", "-4", "route"], check=False)
        print(f"--- {user} ({ns}) wg show / routes ---\n{wg.stdout}{wg.stderr}{routes.stdout}")


def _run(lab: Lab, ns: str, argv: list[str]) -> subprocess.CompletedProcess[str]:
    return lab.topo.run(ns, argv, check=False, timeout=20)


def http(lab: Lab, apps: Apps, user: str, port: int = 80) -> subprocess.CompletedProcess[str]:
    return _run(lab, lab.client_ns(user), apps.nginx.curl_argv(lab.topo.app_address, port))


def ssh(lab: Lab, apps: Apps, user: str) -> subprocess.CompletedProcess[str]:
    return _run(lab, lab.client_ns(user), apps.sshd.ssh_argv(lab.topo.app_address, "echo $SSH_CLIENT"))


def psql(lab: Lab, apps: Apps, user: str) -> subprocess.CompletedProcess[str]:
    return _run(
        lab, lab.client_ns(user), apps.postgres.psql_argv(lab.topo.app_address, "select inet_client_addr()")
    )


def test_allowed_user_reaches_allowed_apps(env: tuple[Lab, Apps]) -> None:
    lab, apps = env
    r = http(lab, apps, "alice")
    assert r.returncode == 0, r.stderr
    # SNAT on: the app sees the active connector's LAN address
    assert r.stdout.strip() in {str(lab.topo.connector_lan(1)), str(lab.topo.connector_lan(2))}
    s = ssh(lab, apps, "alice")
    assert s.returncode == 0, s.stderr
    assert s.stdout.split()[0] == r.stdout.strip()


def test_port_no_policy_grants_is_refused(env: tuple[Lab, Apps]) -> None:
    lab, apps = env
    r = http(lab, apps, "alice", port=8080)
    assert r.returncode != 0
    assert "refused" in r.stderr.lower() or "couldn't connect" in r.stderr.lower(), r.stderr


def test_users_reach_only_their_own_apps(env: tuple[Lab, Apps]) -> None:
    lab, apps = env
    assert psql(lab, apps, "alice").returncode != 0  # db belongs to dba
    d = psql(lab, apps, "dave")
    assert d.returncode == 0, d.stderr
    assert http(lab, apps, "dave").returncode != 0
    assert ssh(lab, apps, "dave").returncode != 0


def test_split_tunnel_routes_only_allowed_destinations(env: tuple[Lab, Apps]) -> None:
    lab, _ = env
    out = lab.zg(
        lab.client_ns("alice"),
        "client",
        "status",
        "--json",
        "--state-dir",
        str(lab.state(lab.client_ns("alice"))),
        "--interface",
        lab.topo.wg_interface(lab.client_ns("alice")),
    )
    import json

    status = json.loads(out)
    assert status["tunnel"] == "up"
    assert sorted(status["applications"]) == ["ssh", "web"]
    assert status["routes"] == [f"{lab.topo.app_address}/32"]
    routes = lab.topo.run(
        lab.client_ns("alice"),
        ["ip", "-4", "route", "show", "dev", lab.topo.wg_interface(lab.client_ns("alice"))],
    ).stdout
    assert str(lab.topo.lan) not in routes  # not the whole LAN, only the app


def test_snat_off_app_sees_client_address(env: tuple[Lab, Apps]) -> None:
    lab, apps = env
    want = address(lab, "alice")
    lab.admin.patch("/v1/connector-groups/site", {"snat": False})
    try:

        def sees_client() -> bool:
            # the LAN's return route for client addresses points at the connector serving now
            lab.topo.app_route_clients(serving_connector(lab))
            r = http(lab, apps, "alice")
            return r.returncode == 0 and r.stdout.strip() == want

        wait_for(sees_client, 30, "the app to see the client's own address with SNAT off")
    finally:
        lab.admin.patch("/v1/connector-groups/site", {"snat": True})
        lab.topo.app_route_clients_remove()

    def snat_back() -> bool:
        r = http(lab, apps, "alice")
        return r.returncode == 0 and r.stdout.strip().startswith(str(lab.topo.lan).rsplit(".", 1)[0])

    wait_for(snat_back, 30, "SNAT back on")


def test_nothing_from_the_internet_reaches_the_lan_or_connector(env: tuple[Lab, Apps]) -> None:
    lab, apps = env
    t = lab.topo
    # the attacker routes the LAN via connector 1's internet address
    r = _run(lab, "atk", apps.nginx.curl_argv(t.app_address))
    assert r.returncode != 0
    # nothing listens on the connector's internet side but WireGuard, which answers nobody it did not dial
    listening = t.run("cn1", ["ss", "-Hltnu"]).stdout.split("\n")
    tcp = [line for line in listening if line.startswith("tcp")]
    assert tcp == [], tcp
    udp = [line.split()[4] for line in listening if line.startswith("udp")]
    assert udp and all(local.rsplit(":", 1)[1] == "51820" for local in udp), udp  # WireGuard's own only
    # a spoofed packet "from a client" arriving on the WAN is not forwarded either
    r = _run(lab, "atk", ["ping", "-c", "2", "-W", "1", "-I", str(t.attacker_address), str(t.app_address)])
    assert r.returncode != 0


def test_the_connector_forwards_nothing_between_other_hosts(env: tuple[Lab, Apps]) -> None:
    """The attacker routes other hosts through connector 1: a hairpin back out its WAN side
    (the gateway, a client) and the controller's port on another address; nothing arrives.
    Without the connector's drop policy, cn1 forwards them and the targets answer directly."""
    lab, _ = env
    t = lab.topo
    via, atk_if = str(t.connector_wan(1)), t.wan_interface("atk")
    port = lab.controller.url.rsplit(":", 1)[1]
    probes = {  # target: a command that succeeds when the target answers the attacker
        str(t.gateway_address): ["ping", "-c", "1", "-W", "1", str(t.gateway_address)],
        str(t.client_address(1)): ["ping", "-c", "1", "-W", "1", str(t.client_address(1))],
        str(t.host_address): ["timeout", "2", "bash", "-c", f"exec 3<>/dev/tcp/{t.host_address}/{port}"],
    }
    # cn1 sends an ICMP redirect before its forward hook drops the packet; a real attacker ignores it
    redirects = [f"net.ipv4.conf.{conf}.accept_redirects" for conf in ("all", atk_if)]
    saved = [f"{k}={t.run('atk', ['sysctl', '-n', k]).stdout.strip()}" for k in redirects]
    for target, argv in probes.items():
        assert _run(lab, "atk", argv).returncode == 0, f"{target} does not answer even without the detour"
    t.run("atk", ["sysctl", "-qw", *(f"{k}=0" for k in redirects)])
    try:
        for target in probes:
            t.run("atk", ["ip", "route", "replace", f"{target}/32", "via", via])
            assert f"via {via}" in t.run("atk", ["ip", "route", "get", target]).stdout
        answered = [target for target, argv in probes.items() if _run(lab, "atk", argv).returncode == 0]
        assert answered == [], f"cn1 forwarded the attacker's packets to {answered}"
        assert "this host did not forward packets before zerogate" in lab.log("cn1")
        assert (lab.state("cn1") / "forwarding.json").read_text() == '{"ip_forward_before": 0}\n'
    finally:
        for target in probes:
            t.run("atk", ["ip", "route", "del", f"{target}/32", "via", via], check=False)
        t.run("atk", ["sysctl", "-qw", *saved])
        t.run("atk", ["ip", "route", "flush", "cache"], check=False)


def test_fail_static_gateway_forwards_while_controller_is_down(env: tuple[Lab, Apps]) -> None:
    lab, apps = env
    lab.stop_controller()
    try:
        time.sleep(1.5)
        for _ in range(3):
            r = http(lab, apps, "alice")
            assert r.returncode == 0, r.stderr
        assert "controller unreachable" in lab.log("gw")
    finally:
        lab.restart_controller()
    wait_for(lambda: lab.log("gw").count("connected to the controller") >= 2, 40, "gateway reconnects")


# The README: new connections work again about a second after the serving connector is cut
# off. The gateway probes every 0.2 s and calls a connector down after 0.9 s without an
# answer. Each attempt below is a fresh connection allowed 0.3 s (curl's default would let a
# lost SYN be resent after 1 s and hide the failover time), so the figure overshoots by at
# most ~0.4 s. Measured 1.02-1.30 s (5 runs, 2 of them with both cores kept busy on top of a
# load average near 10); the bound leaves room for a slower machine, not for the old 5 s.
FAILOVER_BOUND = 2.0
QUICK_CONNECT = "0.3"


def test_connector_failover_within_about_a_second(env: tuple[Lab, Apps]) -> None:
    lab, apps = env
    t = lab.topo
    r = http(lab, apps, "alice")
    serving = 1 if r.stdout.strip() == str(t.connector_lan(1)) else 2
    other = 3 - serving
    lab.wait_connectors_up([f"cn{other}"])
    quick = ["curl", "-sS", "--noproxy", "*", "--connect-timeout", QUICK_CONNECT, "--max-time", "1"]
    quick.append(apps.nginx.url(t.app_address))
    t.set_link(f"cn{serving}", t.wan_interface(f"cn{serving}"), up=False)
    started = time.monotonic()
    try:

        def moved() -> bool:
            r = _run(lab, lab.client_ns("alice"), quick)
            return r.returncode == 0 and r.stdout.strip() == str(t.connector_lan(other))

        wait_for(moved, 15, f"failover from cn{serving} to cn{other}", interval=0.02)
        took = time.monotonic() - started
        print(f"connector failover: a new connection works again after {took:.2f} s")
        assert took < FAILOVER_BOUND, f"failover took {took:.2f} s"
        assert f"connector group site now served by cn{other}" in lab.log("gw")
    finally:
        t.set_link(f"cn{serving}", t.wan_interface(f"cn{serving}"), up=True)


def test_session_expiry_cuts_traffic(env: tuple[Lab, Apps]) -> None:
    lab, apps = env
    ensure_reaches(lab, "dave", 5432)
    dev = lab.device_id("dave")
    ends = (datetime.now(UTC) + timedelta(seconds=3)).strftime("%Y-%m-%d %H:%M:%S.%f")
    run_sql(lab.controller, f"update devices set session_expires_at = '{ends}' where id = {dev}")
    lab.admin.patch("/v1/groups/dba", {"description": "bump"})  # any change makes the gateway refetch
    assert psql(lab, apps, "dave").returncode == 0
    wait_for(lambda: psql(lab, apps, "dave").returncode != 0, 30, "expired session cut", interval=0.3)
    # signing in again restores access
    lab.client_login("dave")
    lab.client_up("dave")
    wait_for(lambda: psql(lab, apps, "dave").returncode == 0, 30, "access back after a new sign-in")


def test_revoking_a_client_device_cuts_it_within_2_s(env: tuple[Lab, Apps]) -> None:
    lab, _ = env
    ensure_reaches(lab, "alice", 80)
    device = lab.device_id("alice")
    took = assert_cut_within(
        lab, "alice", 80, lambda: lab.admin.post(f"/v1/devices/{device}/revoke"), "client device revocation"
    )
    print(f"client device revocation cut traffic within {took:.2f} s")


def test_disabling_a_user_cuts_traffic_within_2_s(env: tuple[Lab, Apps]) -> None:
    lab, _ = env
    ensure_reaches(lab, "dave", 5432)
    took = assert_cut_within(
        lab, "dave", 5432, lambda: lab.admin.patch("/v1/users/dave", {"disabled": True}), "user disabled"
    )
    print(f"disabling the user cut traffic within {took:.2f} s")


def test_address_block_collision_moves_to_the_next_block(env: tuple[Lab, Apps]) -> None:
    lab, apps = env
    lab.admin.patch("/v1/users/dave", {"disabled": False})
    ns = lab.client_ns("dave")
    # dave's laptop now sits on a network inside the default pool block
    lab.topo.run(ns, ["ip", "link", "add", "zghome", "type", "veth", "peer", "name", "zghome2"])
    lab.topo.run(ns, ["ip", "addr", "add", "100.64.200.1/24", "dev", "zghome"])
    lab.topo.run(ns, ["ip", "link", "set", "zghome", "up"])
    # disabling revoked dave's sessions and device: he signs in and registers again
    lab.client_login("dave")
    up = lab.client_up("dave", force=True)
    assert up["address"].startswith("100.65."), up
    assert up["tunnel"] == "up"
    wait_for(lambda: psql(lab, apps, "dave").returncode == 0, 30, "dave reaches the db from 100.65/16")


def test_gateway_reports_peers_to_the_controller(env: tuple[Lab, Apps]) -> None:
    lab, _ = env

    def reported() -> bool:
        gw = [d for d in lab.admin.get("/v1/devices", {"role": "gateway"}) if d["status"] == "active"]
        report = gw[0].get("report") if gw else None
        return bool(
            report and any(p["role"] == "connector" and p["latest_handshake"] for p in report["peers"])
        )

    wait_for(reported, 30, "a gateway report with connector handshakes", interval=0.5)
    gw = next(d for d in lab.admin.get("/v1/devices", {"role": "gateway"}) if d["status"] == "active")
    report = gw["report"]
    assert report["version"]
    assert report["details"]["wireguard"] in ("kernel", "wireguard-go")
    connectors = [p for p in report["peers"] if p["role"] == "connector"]
    assert {p["name"] for p in connectors} == {"cn1", "cn2"}
    assert all(p["rx_bytes"] > 0 and p["tx_bytes"] > 0 for p in connectors if p["up"])
    assert sum(p["active"] for p in connectors) == 1


def test_revoking_connectors_cuts_traffic_within_2_s(env: tuple[Lab, Apps]) -> None:
    lab, _ = env
    ensure_reaches(lab, "dave", 5432)

    def remove_connectors() -> None:
        for c in lab.admin.get("/v1/connectors"):
            lab.admin.delete(f"/v1/connectors/{c['name']}")

    took = assert_cut_within(lab, "dave", 5432, remove_connectors, "connector revocation")
    print(f"revoking the connectors cut traffic within {took:.2f} s")
