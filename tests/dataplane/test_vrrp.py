"""VRRP master/backup connectors end to end: two connectors of group ``site`` on
one LAN run keepalived (started by ``zerogate connector run``), the app routes
the client pool via the virtual IP (SNAT off) or sees the virtual IP (SNAT on),
and when the master dies, or loses its LAN link, the backup takes the virtual IP
and the traffic: the gateway follows the connectors' VRRP state messages.

The tests share one deployment and run in order; each states the master it
starts from (whichever connector holds the VIP) instead of assuming one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from zerogate.connector.vrrp import DEFAULT_ADVERT
from zerogate.testbed.apps import start_nginx
from zerogate.testbed.lab import Lab, wait_for
from zerogate.testbed.topology import Topology

pytestmark = [pytest.mark.xdist_group("vrrp"), pytest.mark.slow]

ADVERT = f"{DEFAULT_ADVERT:.2f}"  # the default, spelled out: the failover bound depends on it
FAILOVER_BOUND = 4.0  # seconds; the goal is about 1 s, the bound leaves room for a loaded machine
CONNECT_TIMEOUT = 0.3  # one fresh TCP connection through the tunnel takes a few ms


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Topology(clients=1, connectors=2, attacker=False) as topo:
        start_nginx(topo)
        lab = Lab(topo)
        try:
            lab.start_controller()
            lab.create_org(snat=False)
            lab.admin.patch("/v1/connector-groups/site", {"vrrp_virtual_ip": str(topo.virtual_ip)})
            topo.app_route_clients(via=topo.virtual_ip)
            lab.start_gateway()
            env = {"ZEROGATE_CONNECTOR_VRRP_ADVERT_INTERVAL": ADVERT}
            for i in (1, 2):
                lab.start_connector(i, env=env)
            lab.wait_connectors_up(["cn1", "cn2"])
            lab.client_login("alice")
            lab.client_up("alice")
            master(lab)
            yield lab
        except BaseException:
            dump(lab)
            raise
        finally:
            lab.close()


def dump(lab: Lab) -> None:
    for role in ("gw", "cn1", "cn2"):
        print(f"--- {role} log (tail) ---\n{lab.log(role)[-4000:]}")


@pytest.fixture(autouse=True)
def logs_on_failure(request: pytest.FixtureRequest, lab: Lab) -> Iterator[None]:
    yield
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        dump(lab)
        for i in (1, 2):
            print(lab.topo.run(f"cn{i}", ["ip", "-br", "addr"], check=False).stdout)


def holds_vip(lab: Lab, i: int) -> bool:
    t = lab.topo
    out = t.run(f"cn{i}", ["ip", "-br", "-4", "addr", "show", "dev", t.lan_interface(f"cn{i}")], check=False)
    return f" {t.virtual_ip}/" in out.stdout


def master(lab: Lab, timeout: float = 20) -> int:
    """The connector that holds the VIP, once exactly one live one does."""
    live = [i for i in (1, 2) if f"cn{i}" in lab.daemons]

    def one() -> bool:
        return sum(holds_vip(lab, i) for i in live) == 1

    wait_for(one, timeout, f"exactly one of {live} holds the virtual IP")
    return next(i for i in live if holds_vip(lab, i))


def connects(lab: Lab, timeout: float = CONNECT_TIMEOUT) -> bool:
    script = f"exec 3<>/dev/tcp/{lab.topo.app_address}/80"
    r = lab.topo.run(lab.client_ns("alice"), ["timeout", str(timeout), "bash", "-c", script], check=False)
    return r.returncode == 0


def seen_by_app(lab: Lab) -> str:
    """The source address nginx sees for alice's request ($remote_addr)."""
    argv = ["curl", "-sS", "--noproxy", "*", "--max-time", "5", f"http://{lab.topo.app_address}/"]
    r = lab.topo.run(lab.client_ns("alice"), argv, check=False)
    assert r.returncode == 0, f"alice cannot reach the app: {r.stderr}"
    return r.stdout.strip()


def client_address(lab: Lab) -> str:
    t = lab.topo
    out = t.run(lab.client_ns("alice"), ["ip", "-br", "-4", "addr", "show", "dev", t.wg_interface("cl1")])
    return out.stdout.split()[2].split("/")[0]


def time_to_reconnect(lab: Lab, action: object) -> float:
    """Seconds from ``action`` to the end of the first fresh TCP connection that works."""
    wait_for(lambda: connects(lab, 3.0), 30, "alice connects before the failover")
    started = time.monotonic()
    assert callable(action)
    action()
    while not connects(lab):
        assert time.monotonic() - started < 30, "alice does not reach the app 30 s after the failover"
    return time.monotonic() - started


def test_master_holds_the_vip_and_app_sees_the_client_address(lab: Lab) -> None:
    t = lab.topo
    m = master(lab)
    backup = 3 - m
    assert not holds_vip(lab, backup)
    assert seen_by_app(lab) == client_address(lab)
    assert f"-> MASTER, virtual IP {lab.topo.virtual_ip} on {lab.topo.lan_interface(f'cn{m}')}" in lab.log(
        f"cn{m}"
    )
    st = lab.state(f"cn{m}")
    argv = ["connector", "status", "--state-dir", str(st), "--interface", t.wg_interface(f"cn{m}"), "--json"]
    vrrp = json.loads(lab.zg(f"cn{m}", *argv))["vrrp"]
    assert (vrrp["state"], vrrp["virtual_ip"], vrrp["keepalived_running"]) == (
        "master",
        str(t.virtual_ip),
        True,
    )
    assert vrrp["config_path"] == str(st / "keepalived.conf") and "vrrp_instance zg_site {" in vrrp["config"]


def test_killed_master_fails_over_and_app_still_sees_the_client(lab: Lab) -> None:
    m = master(lab)
    backup = 3 - m
    took = time_to_reconnect(lab, lambda: lab.crash_connector(m))
    print(f"VRRP failover (SNAT off, master killed, advert {ADVERT} s): new connection after {took:.2f} s")
    assert holds_vip(lab, backup)
    assert seen_by_app(lab) == client_address(lab)
    assert took < FAILOVER_BOUND, f"failover took {took:.2f} s"
    comes_back_as_backup(lab, m)
    assert master(lab) == backup


def comes_back_as_backup(lab: Lab, i: int) -> None:
    """Restart connector ``i``: it joins as backup (no preemption, the flows stay where
    they are) and stays backup through many advertisement intervals."""
    starts = lab.log(f"cn{i}").count("keepalived started")
    lab.restart(f"cn{i}")

    def rejoined() -> bool:
        log = lab.log(f"cn{i}")
        return log.count("keepalived started") > starts and "-> BACKUP" in log.split("keepalived started")[-1]

    wait_for(rejoined, 30, f"cn{i} restarted and joined as backup")
    # A negative: watch for 12 advertisement intervals that it does not take the VIP.
    until = time.monotonic() + 12 * float(ADVERT)
    while time.monotonic() < until:
        assert not holds_vip(lab, i), f"cn{i} took the VIP back (preemption is off)"
        time.sleep(0.05)


def test_lan_link_down_on_the_master_moves_the_vip(lab: Lab) -> None:
    t = lab.topo
    m = master(lab)
    backup = 3 - m
    lan = t.lan_interface(f"cn{m}")
    try:
        took = time_to_reconnect(lab, lambda: t.set_link(f"cn{m}", lan, up=False))
        print(f"VRRP failover (SNAT off, master's LAN link down): new connection after {took:.2f} s")
        assert holds_vip(lab, backup)
        assert seen_by_app(lab) == client_address(lab)
        assert took < FAILOVER_BOUND, f"failover took {took:.2f} s"
    finally:
        t.set_link(f"cn{m}", lan, up=True)
    master(lab)  # one VIP holder again, for the next test


@pytest.mark.xfail(
    strict=False,
    reason="seen in 2 of 3 runs before the config had vrrp_higher_prio_send_advert, not in 2 runs since: "
    "a master whose LAN link returns within a second read a priority-0 advertisement, became master "
    "at once and stayed so beside the other master (keepalived 2.2.7); cause not understood",
)
def test_a_returning_link_leaves_exactly_one_master(lab: Lab) -> None:
    t = lab.topo
    m = master(lab)
    lan = t.lan_interface(f"cn{m}")
    try:
        t.set_link(f"cn{m}", lan, up=False)
        wait_for(lambda: holds_vip(lab, 3 - m), 10, "the backup takes the VIP")
    finally:
        t.set_link(f"cn{m}", lan, up=True)
    settled_on(lab, 3 - m)


def vrrp_state(lab: Lab, i: int) -> str:
    try:
        return str(json.loads((lab.state(f"cn{i}") / "vrrp.json").read_text())["state"])
    except (OSError, ValueError, KeyError):
        return "unknown"


def settled_on(lab: Lab, i: int) -> None:
    """Connector ``i`` is the one master (state and VIP), the other the one backup."""

    def settled() -> bool:
        return (vrrp_state(lab, i), vrrp_state(lab, 3 - i)) == ("MASTER", "BACKUP") and (
            holds_vip(lab, i) and not holds_vip(lab, 3 - i)
        )

    wait_for(settled, 10, f"cn{i} master and cn{3 - i} backup, nobody else holding the VIP")
    until = time.monotonic() + 15 * float(ADVERT)  # ... and it stays so (no split brain)
    while time.monotonic() < until:
        assert settled(), f"states cn{i}={vrrp_state(lab, i)} cn{3 - i}={vrrp_state(lab, 3 - i)}"
        time.sleep(0.05)


def test_killed_daemon_takes_its_keepalived_along(lab: Lab) -> None:
    """SIGKILL to the daemon alone: keepalived (its child, with a parent-death signal)
    stops and releases the VIP; the backup takes over although the dead connector's
    tunnel (wireguard-go) still answers the gateway's probes."""
    m = master(lab)
    pid = int((lab.state(f"cn{m}") / "keepalived.pid").read_text())

    def kill_daemon() -> None:
        proc = lab.daemons.pop(f"cn{m}")
        proc.kill()
        proc.wait(timeout=10)

    took = time_to_reconnect(lab, kill_daemon)
    print(f"VRRP failover (SNAT off, connector daemon killed, keepalived left alone): {took:.2f} s")
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), 10, "keepalived gone with its connector")
    assert holds_vip(lab, 3 - m) and not holds_vip(lab, m)
    assert took < FAILOVER_BOUND, f"failover took {took:.2f} s"
    comes_back_as_backup(lab, m)


def test_snat_on_app_sees_the_virtual_ip_before_and_after_failover(lab: Lab) -> None:
    t = lab.topo
    lab.admin.patch("/v1/connector-groups/site", {"snat": True})
    t.app_route_clients_remove()  # with SNAT on the LAN needs no route to the client pool
    try:
        wait_for(lambda: connects(lab) and seen_by_app(lab) == str(t.virtual_ip), 20, "app sees the VIP")
        m = master(lab)
        took = time_to_reconnect(lab, lambda: lab.crash_connector(m))
        print(f"VRRP failover (SNAT on, master killed): new connection after {took:.2f} s")
        assert seen_by_app(lab) == str(t.virtual_ip)
        assert took < FAILOVER_BOUND, f"failover took {took:.2f} s"
    finally:
        t.app_route_clients(via=t.virtual_ip)
