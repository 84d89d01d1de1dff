"""firewalld integration against a real firewalld on a real (private) D-Bus system bus.

Each test starts its own dbus-daemon (system-bus policy, a socket in a temp
dir) and its own firewalld inside a fresh network namespace, with its permanent
configuration in a temp dir (``--system-config``), so nothing on the machine
is touched. Traffic is real: veth pairs to a "tunnel peer" namespace (behind
the tunnel-like interface ``zg-…``) and a "LAN" namespace (in zone dmz).

    peer ns  10.231.0.2 ─ pe-X ══ zg-X  10.231.0.1 ┐ firewalld ns ┌ 10.232.0.1 la-X ══ lh-X 10.232.0.10  LAN ns
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from nstools import call_in_netns
from zerogate.netops.firewalld import FirewalldIntegration, FirewalldUnavailable, classify_signal
from zerogate.netops.firewalld_plan import POLICY, ZONE
from zerogate.testbed.lab import wait_for

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("firewalld") is None or shutil.which("dbus-daemon") is None,
    reason="needs root and the Debian packages firewalld and dbus-daemon",
)

WG_PORTS = (51820, 53000)
PEER_IP, FW_TUN_IP = "10.231.0.2", "10.231.0.1"
LAN_IP, FW_LAN_IP = "10.232.0.10", "10.232.0.1"
APP_PORT = 8080  # TCP on the LAN host, reached from the tunnel peer through the firewalld host
BLOCKED_BY_US = 9999  # our own nft table drops this one; firewalld must not change that
ZEROGATE_TABLE = f"""table inet zerogate {{
    set blocked {{ type inet_service; elements = {{ {BLOCKED_BY_US} }}; }}
    chain forward {{ type filter hook forward priority 0; policy accept; tcp dport @blocked drop; }}
}}
"""

# ---------------------------------------------------------------------------
# pure parts (the settings computations: test_firewalld_plan.py)
# ---------------------------------------------------------------------------


def test_classify_signal_tells_reload_start_and_stop_apart() -> None:
    assert classify_signal("org.fedoraproject.FirewallD1", "Reloaded", ()) == "reloaded"
    name = "org.fedoraproject.FirewallD1"
    assert classify_signal("org.freedesktop.DBus", "NameOwnerChanged", (name, "", ":1.5")) == "started"
    assert classify_signal("org.freedesktop.DBus", "NameOwnerChanged", (name, ":1.5", "")) == "stopped"
    assert classify_signal("org.freedesktop.DBus", "NameOwnerChanged", ("org.other", "", ":1.6")) is None
    assert classify_signal("org.fedoraproject.FirewallD1.zone", "ZoneUpdated", ("public", {})) is None


def test_bad_interface_or_ports_are_refused_before_anything_is_touched() -> None:
    with pytest.raises(ValueError, match="interface name"):
        FirewalldIntegration("a-name-far-too-long", None)
    with pytest.raises(ValueError, match="UDP ports"):
        FirewalldIntegration("zg0", (53000, 51820))


def test_no_bus_means_not_available_and_ensure_says_why(tmp_path: Path) -> None:
    fw = FirewalldIntegration("zg0", WG_PORTS, bus_address=f"unix:path={tmp_path}/no-such-bus")
    assert not fw.available()
    with pytest.raises(FirewalldUnavailable, match="cannot connect to the system bus"):
        fw.ensure()


# ---------------------------------------------------------------------------
# namespaces and sockets
# ---------------------------------------------------------------------------


def udp_arrives(src_ns: str, dst_ns: str, dst_ip: str, port: int, wait: float = 0.6) -> bool:
    server = call_in_netns(dst_ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    client = call_in_netns(src_ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    with server, client:
        server.bind(("0.0.0.0", port))
        server.settimeout(wait)
        client.sendto(b"wireguard?", (dst_ip, port))
        try:
            return server.recv(64) == b"wireguard?"
        except TimeoutError:
            return False


def tcp_connects(src_ns: str, dst_ns: str, dst_ip: str, port: int, wait: float = 1.5) -> bool:
    server = call_in_netns(dst_ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    client = call_in_netns(src_ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    with server, client:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("0.0.0.0", port))
        server.listen(1)
        server.settimeout(wait)
        client.settimeout(wait)
        try:
            client.connect((dst_ip, port))
            conn, _ = server.accept()
            with conn:
                client.sendall(b"ping")
                return conn.recv(4) == b"ping"
        except OSError:  # refused / unreachable (firewalld's reject) / timeout (a drop)
            return False


def sh(*argv: str, env: dict[str, str] | None = None, check: bool = True) -> str:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env, check=False)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()}")
    return r.stdout


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


# ---------------------------------------------------------------------------
# a firewalld host in a namespace, with its own bus
# ---------------------------------------------------------------------------

_BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
  </policy>
  <include>{firewalld_policy}</include>
</busconfig>
"""


def _firewalld_bus_policy() -> str:
    for path in ("/usr/share/dbus-1/system.d/FirewallD.conf", "/etc/dbus-1/system.d/FirewallD.conf"):
        if Path(path).exists():
            return path
    raise AssertionError(
        "firewalld's D-Bus policy FirewallD.conf is missing: reinstall the firewalld package"
    )


@dataclass
class FirewalldHost:
    base: Path
    sfx: str = field(default_factory=lambda: f"{os.getpid() % 1000:03d}{secrets.token_hex(2)}")
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.fw_ns, self.peer_ns, self.lan_ns = (f"zgfw{self.sfx}", f"zgpe{self.sfx}", f"zgla{self.sfx}")
        self.tun = f"zg-{self.sfx}"  # named like a zerogate tunnel interface
        self.lan_if = f"la-{self.sfx}"
        self.socket = self.base / "bus.sock"
        self.bus_address = f"unix:path={self.socket}"
        self.config_dir = self.base / "firewalld"  # firewalld's permanent configuration (--system-config)
        self.env = {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": self.bus_address, "LC_ALL": "C"}

    # -- topology --------------------------------------------------------------

    def build(self) -> None:
        for ns in (self.fw_ns, self.peer_ns, self.lan_ns):
            sh("ip", "netns", "add", ns)
        sh("ip", "-n", self.fw_ns, "link", "add", self.tun, "type", "veth", "peer", "name", f"pe-{self.sfx}",
           "netns", self.peer_ns)  # fmt: skip
        sh("ip", "-n", self.fw_ns, "link", "add", self.lan_if, "type", "veth", "peer", "name", f"lh-{self.sfx}",
           "netns", self.lan_ns)  # fmt: skip
        for ns, dev, addr in (
            (self.fw_ns, self.tun, f"{FW_TUN_IP}/30"),
            (self.fw_ns, self.lan_if, f"{FW_LAN_IP}/24"),
            (self.peer_ns, f"pe-{self.sfx}", f"{PEER_IP}/30"),
            (self.lan_ns, f"lh-{self.sfx}", f"{LAN_IP}/24"),
        ):
            sh("ip", "-n", ns, "addr", "add", addr, "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", self.peer_ns, "route", "add", "10.232.0.0/24", "via", FW_TUN_IP)
        sh("ip", "-n", self.lan_ns, "route", "add", "10.231.0.0/30", "via", FW_LAN_IP)  # routed mode, no SNAT
        sh("ip", "netns", "exec", self.fw_ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        subprocess.run(
            ["ip", "netns", "exec", self.fw_ns, "nft", "-f", "-"],
            input=ZEROGATE_TABLE, text=True, check=True, timeout=30,
        )  # fmt: skip
        # firewalld's permanent configuration: the stock one, with the LAN interface in zone dmz, so
        # tunnel -> LAN is forwarding between two zones (public -> dmz), which firewalld rejects.
        (self.config_dir / "zones").mkdir(parents=True)
        shutil.copy("/etc/firewalld/firewalld.conf", self.config_dir / "firewalld.conf")
        (self.config_dir / "zones" / "dmz.xml").write_text(
            '<?xml version="1.0" encoding="utf-8"?>\n<zone>\n  <short>DMZ</short>\n'
            f'  <service name="ssh"/>\n  <interface name="{self.lan_if}"/>\n  <forward/>\n</zone>\n'
        )
        (self.base / "bus.conf").write_text(
            _BUS_CONFIG.format(socket=self.socket, firewalld_policy=_firewalld_bus_policy())
        )
        self.procs["dbus"] = subprocess.Popen(
            ["dbus-daemon", f"--config-file={self.base / 'bus.conf'}", "--nofork", "--print-address"],
            stdout=subprocess.PIPE, stderr=(self.base / "dbus.log").open("wb"),
        )  # fmt: skip
        assert self.procs["dbus"].stdout is not None
        address = self.procs["dbus"].stdout.readline().decode()
        assert str(self.socket) in address, f"dbus-daemon did not start: {address!r}"

    def teardown(self) -> None:
        for name in ("firewalld", "dbus"):
            if name in self.procs:
                stop_process(self.procs.pop(name))
        for ns in (self.fw_ns, self.peer_ns, self.lan_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False, timeout=30)

    # -- firewalld -------------------------------------------------------------

    def start_firewalld(self) -> None:
        log = (self.base / "firewalld.log").open("ab")
        self.procs["firewalld"] = subprocess.Popen(
            ["ip", "netns", "exec", self.fw_ns, "firewalld", "--nofork", "--nopid",
             "--system-config", str(self.config_dir), "--log-target", "console"],
            env=self.env, stdout=log, stderr=log,
        )  # fmt: skip
        # On the bus first, then answering (calls queue until its start-up is done).
        probe = FirewalldIntegration("lo", None, bus_address=self.bus_address)
        wait_for(
            lambda: probe.available() or self.procs["firewalld"].poll() is not None,
            30.0,
            "firewalld on the bus",
        )
        assert self.procs["firewalld"].poll() is None, self.log()
        assert self.cmd("--state").strip() == "running"

    def stop_firewalld(self) -> None:
        stop_process(self.procs.pop("firewalld"))

    def cmd(self, *args: str) -> str:
        return sh("firewall-cmd", *args, env=self.env)

    def log(self) -> str:
        return (self.base / "firewalld.log").read_text(errors="replace")

    def zerogate_table(self) -> str:
        return sh("ip", "netns", "exec", self.fw_ns, "nft", "list", "table", "inet", "zerogate")

    # -- traffic ---------------------------------------------------------------

    def wireguard_port_open(self, port: int = 51900) -> bool:
        """UDP from the LAN side (zone dmz) to the firewalld host."""
        return udp_arrives(self.lan_ns, self.fw_ns, FW_LAN_IP, port)

    def tunnel_forwarding(self, port: int = APP_PORT) -> bool:
        """TCP from behind the tunnel interface, forwarded to the LAN host."""
        return tcp_connects(self.peer_ns, self.lan_ns, LAN_IP, port)


@pytest.fixture
def host(tmp_path: Path) -> Iterator[FirewalldHost]:
    h = FirewalldHost(tmp_path)
    try:
        h.build()
        h.start_firewalld()
        yield h
    finally:
        h.teardown()


class Watch:
    """run_watch() in a thread, counting re-applies."""

    def __init__(self, fw: FirewalldIntegration) -> None:
        self.fw = fw
        self.count = 0
        self.cond = threading.Condition()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=fw.run_watch, args=(self.stop, self._reapplied), daemon=True)

    def _reapplied(self) -> None:
        with self.cond:
            self.count += 1
            self.cond.notify_all()

    def wait_beyond(self, seen: int, timeout: float = 30.0) -> int:
        with self.cond:
            if not self.cond.wait_for(lambda: self.count > seen, timeout):
                raise AssertionError(f"the watch did not re-apply within {timeout:.0f} s")
            return self.count

    def __enter__(self) -> Watch:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive(), "run_watch did not stop"


# ---------------------------------------------------------------------------
# the real thing
# ---------------------------------------------------------------------------


def test_ensure_opens_port_and_forwarding_and_the_watch_keeps_them_across_reload_and_restart(
    host: FirewalldHost,
) -> None:
    table_before = host.zerogate_table()
    # firewalld as installed: WireGuard and tunnel forwarding are rejected, other things pass.
    assert not host.wireguard_port_open()
    assert not host.tunnel_forwarding()
    assert udp_arrives(host.fw_ns, host.lan_ns, LAN_IP, 5000)  # the topology itself works

    fw = FirewalldIntegration(host.tun, WG_PORTS, bus_address=host.bus_address)
    assert fw.available()
    changes = fw.ensure()
    assert f"permanent: created zone {ZONE}" in changes and f"permanent: created policy {POLICY}" in changes
    assert any(c.startswith("reloaded firewalld") for c in changes), changes
    assert fw.ensure() == []  # idempotent: nothing to do, no second reload

    assert host.wireguard_port_open(51900) and host.wireguard_port_open(53000)
    assert not host.wireguard_port_open(40000)  # firewalld still guards everything else
    assert host.tunnel_forwarding()
    assert not host.tunnel_forwarding(BLOCKED_BY_US)  # and our own table still has the last word
    assert host.cmd("--get-zone-of-interface", host.tun).strip() == ZONE
    assert host.cmd("--permanent", "--zone", ZONE, "--query-interface", host.tun).strip() == "yes"
    assert host.cmd("--permanent", "--policy", POLICY, "--list-ports").split() == ["51820-53000/udp"]

    with Watch(fw) as watch:
        seen = watch.wait_beyond(0)  # the watch's own first ensure()

        # 1. A plain reload: firewalld rebuilds its table; we stay open, our table is untouched.
        host.cmd("--reload")
        seen = watch.wait_beyond(seen)
        assert host.wireguard_port_open() and host.tunnel_forwarding()
        assert host.zerogate_table() == table_before

        # 2. Configuration management rewrote the permanent config without us, then reloaded.
        host.cmd("--permanent", "--zone", ZONE, "--remove-interface", host.tun)
        host.cmd("--permanent", "--policy", POLICY, "--remove-port", "51820-53000/udp")
        host.cmd("--reload")
        seen = watch.wait_beyond(seen)
        assert host.wireguard_port_open() and host.tunnel_forwarding()
        assert host.cmd("--permanent", "--zone", ZONE, "--query-interface", host.tun).strip() == "yes"

        # 3. firewalld restarts, and our objects vanished from its config while it was down.
        host.stop_firewalld()
        assert not fw.available()
        with pytest.raises(FirewalldUnavailable, match="not running"):
            fw.ensure()
        (host.config_dir / "zones" / f"{ZONE}.xml").unlink()
        (host.config_dir / "policies" / f"{POLICY}.xml").unlink()
        host.start_firewalld()
        seen = watch.wait_beyond(seen)
        assert host.wireguard_port_open() and host.tunnel_forwarding()
        assert (host.config_dir / "zones" / f"{ZONE}.xml").exists()
        assert host.zerogate_table() == table_before
        assert not host.tunnel_forwarding(BLOCKED_BY_US)
    assert host.procs["firewalld"].poll() is None, host.log()


def test_roles_share_the_zone_and_remove_takes_away_only_their_own(host: FirewalldHost) -> None:
    gateway = FirewalldIntegration(host.tun, WG_PORTS, bus_address=host.bus_address)
    other = FirewalldIntegration(f"zg2-{host.sfx}", None, bus_address=host.bus_address)
    gateway.ensure()
    assert other.ensure() == [
        f"permanent: updated zone {ZONE}",
        f"runtime: added interface zg2-{host.sfx} to zone {ZONE}",
    ]  # no reload: the zone already exists
    assert host.tunnel_forwarding()

    removed = gateway.remove()
    assert f"permanent: deleted policy {POLICY}" in removed
    assert host.cmd("--permanent", "--zone", ZONE, "--list-interfaces").split() == [f"zg2-{host.sfx}"]
    assert not host.tunnel_forwarding() and not host.wireguard_port_open()  # closed now, no reload needed
    assert gateway.remove() == []

    assert f"permanent: deleted zone {ZONE}" in other.remove()
    assert ZONE not in host.cmd("--permanent", "--get-zones").split()
    host.cmd("--reload")
    assert ZONE not in host.cmd("--get-zones").split()


def test_ensure_moves_the_interface_out_of_a_zone_someone_else_put_it_in(host: FirewalldHost) -> None:
    host.cmd("--permanent", "--zone", "internal", "--add-interface", host.tun)
    host.cmd("--reload")
    assert host.cmd("--get-zone-of-interface", host.tun).strip() == "internal"
    fw = FirewalldIntegration(host.tun, None, bus_address=host.bus_address)
    changes = fw.ensure()
    assert f"permanent: moved interface {host.tun} out of zone internal" in changes
    assert host.cmd("--get-zone-of-interface", host.tun).strip() == ZONE
    assert host.cmd("--permanent", "--get-zone-of-interface", host.tun).strip() == ZONE
    assert host.tunnel_forwarding()
    assert not host.wireguard_port_open()  # no ports asked for, none opened
