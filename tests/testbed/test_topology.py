"""The testbed for real: namespaces, veths, bridges, nginx/sshd/PostgreSQL, cleanup.

Runs as root (CI does): every test builds its own topology through the code
under test and the topology removes itself, also when a test fails.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from nstools import slot_is_free, slot_namespaces
from zerogate.netops import netns
from zerogate.netops.command import CommandError
from zerogate.testbed import Apps, Topology, start_apps
from zerogate.testbed.apps import OTHER_PORT_BODY
from zerogate.testbed.lab import wait_for
from zerogate.testbed.slots import WIREGUARD_SOCKET_DIR, _alive


def pings(topo: Topology, ns: str, address: object) -> bool:
    done = topo.run(ns, ["ping", "-c", "1", "-W", "1", str(address)], check=False, timeout=10)
    return done.returncode == 0


@pytest.fixture(scope="module")
def topo() -> Iterator[Topology]:
    with Topology() as t:
        yield t


@pytest.fixture(scope="module")
def apps(topo: Topology) -> Apps:
    return start_apps(topo)


# -- the network as built ------------------------------------------------------------


def test_build_is_fast_and_every_namespace_exists(topo: Topology) -> None:
    assert topo.build_seconds is not None and topo.build_seconds < 2.0
    assert sorted(slot_namespaces(topo.index)) == sorted(topo.ns(n) for n in topo.namespaces)
    for name in topo.namespaces:
        assert "state UNKNOWN" in topo.run(name, ["ip", "link", "show", "lo"]).stdout  # lo is up
    for name in topo.hosts:
        assert topo.run(name, ["sysctl", "-n", "net.ipv4.ip_forward"]).stdout.strip() == "0"


def test_only_the_attacker_has_a_route_beyond_its_segment(topo: Topology) -> None:
    attacker_route = f"{topo.lan} via {topo.connector_wan(1)} dev {topo.wan_interface('atk')}"
    for name in topo.hosts:
        routes = topo.run(name, ["ip", "-4", "route", "show"]).stdout.splitlines()
        extra = [r.strip() for r in routes if "proto kernel" not in r]
        assert extra == ([attacker_route] if name == "atk" else []), name


def test_internet_segment_connects_all_its_hosts(topo: Topology) -> None:
    assert pings(topo, "cl1", topo.gateway_address)
    assert pings(topo, "cl2", topo.gateway_address)
    assert pings(topo, "cn2", topo.gateway_address)
    assert pings(topo, "atk", topo.connector_wan(1))
    assert pings(topo, "gw", topo.host_address)
    assert pings(topo, "cn1", topo.app_address)  # the LAN segment
    assert not pings(topo, "cl1", topo.app_address)  # no route from the internet into the LAN


def test_root_namespace_reaches_a_server_in_the_gateway(topo: Topology) -> None:
    (topo.tmp / "www").mkdir()
    (topo.tmp / "www" / "hello.txt").write_text("hello from the gateway namespace\n")
    server = topo.popen(
        "gw",
        [
            sys.executable,
            "-m",
            "http.server",
            "--bind",
            str(topo.gateway_address),
            "--directory",
            str(topo.tmp / "www"),
            "8000",
        ],
        log=topo.tmp / "http-server.log",
    )
    url = f"http://{topo.gateway_address}:8000/hello.txt"
    argv = ["curl", "-sS", "--noproxy", "*", "--max-time", "2", url]
    fetched: list[str] = []

    def answered() -> bool:
        assert server.poll() is None, (topo.tmp / "http-server.log").read_text()
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)  # from the root namespace
        fetched.append(done.stdout)
        return done.returncode == 0

    wait_for(answered, 10.0, "the gateway's HTTP server to answer the root namespace")
    assert fetched[-1] == "hello from the gateway namespace\n"
    # The gateway saw the root namespace's testbed address.
    assert f"{topo.host_address} - -" in (topo.tmp / "http-server.log").read_text()


def test_attacker_cannot_reach_the_lan_through_a_connector(topo: Topology, apps: Apps) -> None:
    assert pings(topo, "atk", topo.connector_wan(1))  # the connector itself is reachable
    assert not pings(topo, "atk", topo.app_address)
    curl = ["curl", "-sS", "--noproxy", "*", "--connect-timeout", "1", apps.nginx.url(topo.app_address)]
    done = topo.run("atk", curl, check=False)
    assert done.returncode == 28 and done.stdout == ""  # 28: timed out, the packets went nowhere


def test_attacker_check_can_fail_when_a_connector_forwards() -> None:
    """Control for the test above: with forwarding and a return route, the same probe gets through."""
    with Topology(clients=0, connectors=1) as t:
        assert not pings(t, "atk", t.app_address)
        t.run("cn1", ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
        netns.replace_route(t.ns("app"), t.internet, t.connector_lan(1))
        wait_for(
            lambda: pings(t, "atk", t.app_address),
            10.0,
            "the attacker to reach the app via a forwarding connector",
        )


def test_app_return_route_for_clients(topo: Topology) -> None:
    def route() -> str:
        return topo.run("app", ["ip", "-4", "route", "show", "100.64.0.0/10"]).stdout.strip()

    topo.app_route_clients(via_connector=2)
    assert route().startswith(f"100.64.0.0/10 via {topo.connector_lan(2)} ")
    topo.app_route_clients()  # replace, not add: switching connectors must work
    assert route().startswith(f"100.64.0.0/10 via {topo.connector_lan(1)} ")
    topo.app_route_clients_remove()
    topo.app_route_clients_remove()  # removing what is gone is fine
    assert route() == ""


def test_set_link_cuts_and_restores_a_connector_wan(topo: Topology) -> None:
    wan = topo.wan_interface("cn2")
    topo.set_link("cn2", wan, up=False)
    try:
        assert not pings(topo, "cn2", topo.gateway_address)
    finally:
        topo.set_link("cn2", wan, up=True)
    wait_for(lambda: pings(topo, "cn2", topo.gateway_address), 10.0, "cn2 to reach the gateway again")


def test_run_reports_the_failing_command_and_its_stderr(topo: Topology) -> None:
    with pytest.raises(CommandError, match="No such file or directory"):
        topo.run("gw", ["cat", "/nonexistent/zerogate"])
    assert topo.run("gw", ["cat", "/nonexistent/zerogate"], check=False).returncode == 1
    assert topo.run("gw", ["cat"], input="piped\n").stdout == "piped\n"


# -- the apps --------------------------------------------------------------------------


def test_apps_show_the_source_address_they_saw(topo: Topology, apps: Apps) -> None:
    app = topo.app_address
    assert topo.run("cn1", apps.nginx.curl_argv(app)).stdout == f"{topo.connector_lan(1)}\n"
    assert topo.run("cn2", apps.nginx.curl_argv(app, port=8080)).stdout == OTHER_PORT_BODY
    assert topo.run("app", apps.nginx.curl_argv(app)).stdout == f"{app}\n"
    ssh = topo.run("cn1", apps.sshd.ssh_argv(app, "echo $SSH_CLIENT")).stdout
    assert ssh.split()[0] == str(topo.connector_lan(1)) and ssh.split()[2] == "22"
    psql = topo.run("cn2", apps.postgres.psql_argv(app, "select inet_client_addr()"))
    assert psql.stdout == f"{topo.connector_lan(2)}\n"


def test_apps_listen_on_the_app_address_only(topo: Topology, apps: Apps) -> None:
    for port in (80, 8080, 22, 5432):
        done = topo.run(
            "app",
            ["curl", "-s", "--noproxy", "*", "--max-time", "2", f"telnet://127.0.0.1:{port}"],
            check=False,
        )
        assert done.returncode == 7, f"port {port} answers on the app's loopback"  # 7: connection refused


def test_ssh_refuses_a_key_it_does_not_know(topo: Topology, apps: Apps) -> None:
    stranger = topo.tmp / "stranger_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    argv = apps.sshd.ssh_argv(topo.app_address, "true")
    argv[argv.index(str(apps.sshd.key))] = str(stranger)
    done = topo.run("cn1", argv, check=False)
    assert done.returncode == 255 and "Permission denied" in done.stderr


def test_app_processes_run_inside_the_app_namespace(topo: Topology, apps: Apps) -> None:
    inside = set(netns.namespace_pids(topo.ns("app")))
    for proc in (apps.nginx.process, apps.sshd.process, apps.postgres.process):
        assert proc.poll() is None and proc.pid in inside
    uid = os.stat(f"/proc/{apps.postgres.process.pid}").st_uid
    assert uid != 0  # PostgreSQL runs as the 'postgres' OS user


# -- lifecycle --------------------------------------------------------------------------


def test_close_removes_everything_it_made() -> None:
    t = Topology(clients=1, connectors=1).build()
    k, tmp = t.index, t.tmp
    tracked = t.popen("gw", ["sleep", "300"], log=t.tmp / "sleep.log")
    # A grandchild the topology never saw: it must die with its namespace.
    t.popen("app", ["sh", "-c", "sleep 301 & exec sleep 302"], log=t.tmp / "sh.log")
    wait_for(lambda: len(netns.namespace_pids(t.ns("app"))) == 2, 10.0, "both sleeps in the app namespace")
    untracked = netns.namespace_pids(t.ns("app"))
    # A wireguard-go control socket left behind by a killed daemon of this slot.
    WIREGUARD_SOCKET_DIR.mkdir(parents=True, exist_ok=True)
    stale_socket = WIREGUARD_SOCKET_DIR / f"{t.wg_interface('gw')}.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(stale_socket))
    assert netns.link_exists(None, t.host_interface)

    t.close()

    assert slot_namespaces(k) == []
    assert not netns.link_exists(None, f"zg{k}host")
    assert tracked.poll() is not None
    assert not any(_alive(pid) for pid in untracked)
    assert not tmp.exists()
    assert not stale_socket.exists()
    assert slot_is_free(k)
    t.close()  # idempotent


def test_keep_env_keeps_the_temp_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZEROGATE_KEEP_TESTBED", "1")
    with Topology(clients=0, connectors=0, attacker=False) as t:
        (t.tmp / "daemon.log").write_text("kept\n")
    try:
        assert (t.tmp / "daemon.log").read_text() == "kept\n"
        assert slot_namespaces(t.index) == []
    finally:
        shutil.rmtree(t.tmp)


def test_an_exception_in_the_with_block_still_cleans_up() -> None:
    with pytest.raises(RuntimeError, match="test failure"), Topology(clients=0, connectors=1) as t:
        k = t.index
        raise RuntimeError("test failure")
    assert slot_namespaces(k) == [] and slot_is_free(k)


def test_a_failed_build_cleans_up_injected_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    """The root batch ran (namespaces exist), then configuring them fails: nothing may remain."""

    def broken(*args: object, **kwargs: object) -> None:
        raise netns.NetnsError(["ip", "link"], 2, "injected failure")

    monkeypatch.setattr(netns, "run_parallel", broken)
    t = Topology()
    with pytest.raises(netns.NetnsError, match="injected failure"):
        t.build()
    assert t.index and slot_namespaces(t.index) == [] and slot_is_free(t.index)
    assert not netns.link_exists(None, f"zg{t.index}host")


def test_two_topologies_at_once_get_different_slots() -> None:
    with (
        Topology(clients=1, connectors=1, attacker=False) as a,
        Topology(clients=1, connectors=1, attacker=False) as b,
    ):
        assert a.index != b.index and a.prefix != b.prefix
        assert a.internet != b.internet and a.wg_interface("gw") != b.wg_interface("gw")
        for t in (a, b):
            done = subprocess.run(["ping", "-c", "1", "-W", "1", str(t.gateway_address)], capture_output=True)
            assert done.returncode == 0
