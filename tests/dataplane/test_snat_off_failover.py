"""SNAT off, plain hot standby (no VRRP): a failover keeps a server-to-client
stream going, and the LAN still cannot open anything towards a client.

Real controller, gateway, two connectors, clients and sshd in namespaces (the
:class:`Lab`). With SNAT off the app answers the client's own address, so the
LAN routes the client pool to the serving connector; after a failover the LAN
must point that route at the new one (what an operator's router does, or what
VRRP's virtual IP does by itself). The new connector never saw the flow: the
test shows that it carries the rest of a download that only the server sends.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator

import pytest
from tests.dataplane.reach import address, serving_connector

from nstools import call_in_netns
from packets import Counters, send_tcp_segment
from zerogate.netops.command import CommandError
from zerogate.testbed.apps import Sshd, start_sshd
from zerogate.testbed.lab import Lab, wait_for
from zerogate.testbed.topology import Topology

pytestmark = [pytest.mark.xdist_group("dataplane"), pytest.mark.slow]

LINES = 60  # the stream: one line every 50 ms, 3 s in all
STREAM = f"for i in $(seq 1 {LINES}); do echo line $i; sleep 0.05; done; echo end"


@pytest.fixture(scope="module")
def env() -> Iterator[tuple[Lab, Sshd]]:
    with Topology(clients=2, connectors=2, attacker=False) as topo:
        sshd = start_sshd(topo)
        lab = Lab(topo)
        try:
            lab.deploy(connectors=2)
            lab.admin.patch("/v1/connector-groups/site", {"snat": False})
            yield lab, sshd
        except BaseException:
            for role in ("gw", "cn1", "cn2"):
                print(f"--- {role} log ---\n{lab.log(role)[-4000:]}")
            raise
        finally:
            lab.close()


def ssh(lab: Lab, sshd: Sshd, command: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """alice's ssh to the app; a session that hangs (the app's route still points at the
    other connector) counts as a failure, exit status 124, like timeout(1)."""
    argv = sshd.ssh_argv(lab.topo.app_address, command)
    try:
        return lab.topo.run("cl1", argv, check=False, timeout=timeout)
    except CommandError as exc:
        return subprocess.CompletedProcess(argv, 124, "", str(exc))


def routed_to_serving(lab: Lab, sshd: Sshd) -> int:
    """Point the app's route for the client pool at the serving connector; wait until
    alice reaches sshd and it sees her own address (SNAT is off). The connector's number."""
    want = address(lab, "alice")
    serving = 0

    def sees_client() -> bool:
        nonlocal serving
        serving = serving_connector(lab)
        lab.topo.app_route_clients(serving)
        r = ssh(lab, sshd, "echo $SSH_CLIENT", timeout=5)
        return r.returncode == 0 and r.stdout.split()[:1] == [want]

    wait_for(sees_client, 30, "alice reaches sshd, which sees her own address (SNAT off)", interval=0.2)
    return serving


class TopoNs:
    """A topology namespace with the ``run(*argv)`` shape :class:`Counters` expects."""

    def __init__(self, lab: Lab, ns: str) -> None:
        self.lab, self.ns = lab, ns

    def run(
        self, *argv: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self.lab.topo.run(self.ns, list(argv), input=input, check=check)


def test_a_lan_host_cannot_open_a_flow_to_a_client(env: tuple[Lab, Sshd]) -> None:
    """The connector passes a LAN -> client segment that could continue a flow (ACK, no SYN);
    the gateway's conntrack drops it, because no client opened that flow. A SYN does not
    even leave the connector."""
    lab, sshd = env
    t = lab.topo
    routed_to_serving(lab, sshd)
    client, app = address(lab, "alice"), str(t.app_address)
    syn_port, ack_port = 7101, 7102
    gw_if = t.wg_interface("gw")
    probe = Counters(
        TopoNs(lab, "gw"),
        "forward",
        [f'iifname "{gw_if}" ip saddr {app} tcp dport {p}' for p in (syn_port, ack_port)],
    )

    def listen() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((client, syn_port))
        s.listen(1)
        return s

    # the client listens, so a SYN that got through would connect (or be refused by a firewall)
    listener = call_in_netns(t.ns("cl1"), listen)
    try:

        def connect() -> str:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind((app, 0))
                s.settimeout(1.5)
                try:
                    s.connect((client, syn_port))
                except TimeoutError:
                    return "dropped"
                except ConnectionRefusedError:
                    return "refused"
                return "connected"

        assert call_in_netns(t.ns("app"), connect) == "dropped"
        send_tcp_segment(t.ns("app"), app, client, ack_port, "ack", count=3)
        wait_for(lambda: probe.read()["seen"][1] == 3, 10, "the ACK segments reach the gateway")
        counts = probe.read()
        assert counts["seen"] == [0, 3]  # the connector stops the SYN, forwards the ACKs
        assert counts["passed"] == [0, 0]  # the gateway forwards none to the client
    finally:
        listener.close()
        probe.remove()


def test_a_server_to_client_stream_survives_a_failover_with_snat_off(
    env: tuple[Lab, Sshd],
) -> None:
    lab, sshd = env
    t = lab.topo
    serving = routed_to_serving(lab, sshd)
    other = 3 - serving
    lab.wait_connectors_up([f"cn{other}"])
    log = t.tmp / "stream.log"
    stream = t.popen("cl1", sshd.ssh_argv(t.app_address, STREAM), log=log)

    def received() -> list[str]:
        return log.read_text(errors="replace").split("\n")

    try:
        wait_for(lambda: "line 10" in received(), 20, "the stream to start")
        t.set_link(f"cn{serving}", t.wan_interface(f"cn{serving}"), up=False)
        wait_for(
            lambda: serving_connector(lab) == other, 15, f"the gateway to move to cn{other}", interval=0.1
        )
        t.app_route_clients(other)  # what the LAN must do without VRRP
        moved = time.monotonic()
        assert "end" not in received(), "the stream ended before the failover: make it longer"
        wait_for(lambda: stream.poll() is not None, 40, "the stream to finish through the new connector")
        print(f"the stream went on {time.monotonic() - moved:.2f} s after the LAN route moved")
        assert stream.returncode == 0, log.read_text(errors="replace")[-2000:]
        assert received() == [*(f"line {i}" for i in range(1, LINES + 1)), "end", ""]
    finally:
        if stream.poll() is None:
            stream.kill()  # our own ssh client, by PID
            stream.wait(timeout=10)
        t.set_link(f"cn{serving}", t.wan_interface(f"cn{serving}"), up=True)
