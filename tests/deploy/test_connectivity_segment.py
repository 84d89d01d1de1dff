"""``zerogate connectivity-test --role segment`` against real listeners.

One lab for the module (names prefixed ``zgct``): an :class:`SshFleet` of two real
sshd hosts, a real enrolled segment server state (``SegmentLab``: a real
controller relayed into the fleet's server namespace), and in that namespace a
real slapd, a DNS responder answering real queries on 127.0.0.1:53 (named in
``/etc/netns/<ns>/resolv.conf``, which ``ip netns exec`` puts over
``/etc/resolv.conf``), a TLS listener as the server's ``jit_listen`` and a TCP
listener standing in for WinRM (no Windows here: only reachability is tested).
The command runs in the server namespace as an operator would run it.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import socket
import ssl
import struct
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from zerogate.deploy.connectivity_segment import (
    CHECK_NAMES,
    SegmentTargets,
    dns_query,
    parse_winrm,
    read_resolvers,
    run_segment_checks,
)
from zerogate.pki.ca import create_ca, issue_server_certificate
from zerogate.segment.breakglass import save_inventory
from zerogate.testbed.localrun import zerogate_argv
from zerogate.testbed.proxy import ProxyError, Squid, squid_binary
from zerogate.testbed.segmentlab import Relay, SegmentLab, forward_into
from zerogate.testbed.slapd import Slapd
from zerogate.testbed.sshhosts import SERVER_ADDRESS, SshFleet

CTL_NAME = "ctl.zgct.test"
JIT = f"{SERVER_ADDRESS}:8443"
_PROXY_VARS = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY")


class DnsResponder:
    """A real DNS server on a UDP socket: A records for ``names``, NOERROR for the root
    zone, NXDOMAIN for everything else."""

    def __init__(self, sock: socket.socket, names: dict[str, str]) -> None:
        self.sock, self.names = sock, names
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(512)
            except OSError:
                return  # closed
            with contextlib.suppress(Exception):
                self.sock.sendto(self._answer(data), peer)

    def _answer(self, query: bytes) -> bytes:
        ident = query[:2]
        labels, i = [], 12
        while query[i]:
            labels.append(query[i + 1 : i + 1 + query[i]].decode())
            i += 1 + query[i]
        question = query[12 : i + 5]
        name = ".".join(labels)
        address = self.names.get(name)
        rcode = 0 if address or not name else 3
        head = ident + struct.pack("!HHHHH", 0x8180 | rcode, 1, 1 if address else 0, 0, 0)
        if address is None:
            return head + question
        record = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + socket.inet_aton(address)
        return head + question + record

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(5)


class Listener:
    """Accepts TCP (optionally TLS) connections and closes them; for WinRM and jit_listen."""

    def __init__(self, sock: socket.socket, tls: ssl.SSLContext | None = None) -> None:
        self.sock, self.tls = sock, tls
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with contextlib.suppress(OSError), conn:
                conn.settimeout(5)
                if self.tls is not None:
                    self.tls.wrap_socket(conn, server_side=True).close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(5)


def _bound(kind: int, address: tuple[str, int]) -> socket.socket:
    s = socket.socket(socket.AF_INET, kind)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(address)
    if kind == socket.SOCK_STREAM:
        s.listen(16)
    return s


@dataclass
class Site:
    fleet: SshFleet
    lab: SegmentLab
    slapd: Slapd
    config: Path
    tmp: Path

    @property
    def state_dir(self) -> Path:
        return self.lab.server.state_dir

    def zg(self, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
        """The command in the server namespace, with exactly ``env`` as proxy settings."""
        unset = [a for v in _PROXY_VARS for a in ("-u", v, "-u", v.lower())]
        given = [f"{k}={v}" for k, v in (env or {}).items()]
        argv = ["env", *unset, *given, *zerogate_argv(), "connectivity-test", "--role", "segment", *args]
        r = self.fleet.run(self.fleet.server_ns, argv, check=False, timeout=120)
        return r.returncode, r.stdout + r.stderr

    def rows(self, *args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, dict[str, Any]]]:
        code, text = self.zg("--config", str(self.config), "--json", *args, env=env)
        data = json.loads(text)
        assert data["role"] == "segment" and data["ok"] == (code == 0)
        return code, {r["id"]: r for r in data["results"]}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("zgct")
    closers: list[Any] = []
    netns_etc: Path | None = None
    with SshFleet(2, tmp / "fleet", clients=0, prefix=f"zgct{secrets.token_hex(3)}") as fleet:
        lab = SegmentLab(fleet, tmp)
        try:
            lab.start_controller()
            lab.enroll_server("root")
            save_inventory(lab.server.state_dir / "inventory.json", [h.asset() for h in fleet.hosts])
            slapd = Slapd()
            fleet.call(slapd.start, timeout=120)  # its process lives in the server namespace
            closers.append(slapd.stop)
            dns = fleet.call(lambda: DnsResponder(_bound(socket.SOCK_DGRAM, ("127.0.0.1", 53)),
                                                  {CTL_NAME: str(SERVER_ADDRESS)}))  # fmt: skip
            closers.append(dns.close)
            netns_etc = Path("/etc/netns") / fleet.server_ns
            netns_etc.mkdir(parents=True)
            (netns_etc / "resolv.conf").write_text("nameserver 127.0.0.1\n")
            ca_key, ca_cert = create_ca("zgct test CA")
            key_pem, cert_pem = issue_server_certificate(ca_key, ca_cert, [str(SERVER_ADDRESS)])
            (tmp / "jit.pem").write_bytes(cert_pem)
            (tmp / "jit.key").write_bytes(key_pem)
            (tmp / "jit.key").chmod(0o600)
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(tmp / "jit.pem", tmp / "jit.key")
            host, port = JIT.split(":")
            jit = fleet.call(lambda: Listener(_bound(socket.SOCK_STREAM, (host, int(port))), ctx))
            closers.append(jit.close)
            winrm = fleet.call(lambda: Listener(_bound(socket.SOCK_STREAM, ("127.0.0.1", 5985))))
            closers.append(winrm.close)
            password = tmp / "ldap.pw"
            password.write_text(slapd.reader.password)
            password.chmod(0o600)
            config = tmp / "segment.toml"
            config.write_text(
                "[segment]\n"
                f'state_dir = "{lab.server.state_dir}"\n'
                f'directory_url = "{slapd.url}"\n'
                f'directory_bind_dn = "{slapd.reader.dn}"\n'
                f'directory_password_file = "{password}"\n'
                f'directory_base_dn = "{slapd.suffix}"\n'
                f'directory_monitored_group_dn = "cn=monitored,{slapd.groups_dn}"\n'
                f'directory_protected_group_dn = "cn=protected,{slapd.groups_dn}"\n'
                f'jit_listen = "{JIT}"\n'
                f'jit_cert_file = "{tmp / "jit.pem"}"\n'
                f'jit_key_file = "{tmp / "jit.key"}"\n'
            )
            yield Site(fleet, lab, slapd, config, tmp)
        finally:
            for close in reversed(closers):
                with contextlib.suppress(Exception):
                    close()
            if netns_etc is not None:
                shutil.rmtree(netns_etc, ignore_errors=True)
            lab.close()


# ---------------------------------------------------------------------------------------


def test_every_port_of_a_segment_server_passes_against_real_listeners(site: Site) -> None:
    code, rows = site.rows("--winrm", "127.0.0.1", "--skip", "ldaps", "--skip", "gc", "--skip", "kerberos")
    assert code == 0, rows
    for name in ("state", "dns", "tcp", "tls", "credential"):
        assert rows[f"controller:{name}"]["status"] == "pass", rows[f"controller:{name}"]
    assert rows["dns:127.0.0.1"]["status"] == "pass"  # the resolver of the namespace's resolv.conf
    assert rows[f"ldap:{site.slapd.port}"]["status"] == "pass"  # a real anonymous bind was answered
    for host in site.fleet.hosts:
        ssh = rows[f"ssh:host{host.index}"]
        assert ssh["status"] == "pass" and ssh["endpoint"] == f"{host.address}:22"
        assert ssh["latency_ms"] is not None
    assert rows["winrm:127.0.0.1"]["status"] == "pass"
    assert rows["jit"]["status"] == "pass" and "presents the certificate" in rows["jit"]["detail"]
    for name in ("ldaps", "gc", "kerberos"):
        assert rows[name]["status"] == "skip" and f"--skip {name}" in rows[name]["detail"]


def test_closed_ports_fail_with_a_non_zero_exit_and_openldap_is_named(site: Site) -> None:
    code, rows = site.rows("--winrm", "127.0.0.1:5986")
    assert code == 1
    assert rows["winrm:127.0.0.1"]["status"] == "fail" and "refused" in rows["winrm:127.0.0.1"]["detail"]
    assert rows["ldaps:636"]["status"] == "fail"
    for row in ("gc:3268", "gc:3269", "kerberos:88"):
        assert rows[row]["status"] == "fail" and "OpenLDAP" in rows[row]["fix"], rows[row]
    code, text = site.zg("--config", str(site.config), "--winrm", "127.0.0.1:5986")
    assert code == 1 and "--skip gc --skip kerberos" in text and "no OS field" in text
    assert "zerogate connectivity: segment" in text


def test_the_controller_goes_through_https_proxy_unless_no_proxy_matches(site: Site) -> None:
    only = [a for n in CHECK_NAMES if n != "controller" for a in ("--skip", n)]
    dead = {"HTTPS_PROXY": "http://127.0.0.1:9"}  # nothing listens there
    code, rows = site.rows(*only, env=dead)
    assert code == 1 and rows["controller:tcp"]["status"] == "fail"
    assert "via the proxy" in rows["controller:tcp"]["title"]
    code, rows = site.rows(*only, env=dead | {"NO_PROXY": "127.0.0.1"})
    assert code == 0 and rows["controller:credential"]["status"] == "pass"
    assert "proxy" not in rows["controller:tcp"]["title"]
    if squid_binary() is None:
        pytest.skip("squid is not installed: run scripts/bootstrap (it installs the Debian package)")
    with tempfile.TemporaryDirectory(prefix="zgct-squid-") as base:  # squid's user cannot enter tmp_path
        squid = Squid(Path(base), (site.lab.controller.port,))
        relay: Relay | None = None
        try:
            squid.start()
            relay = forward_into(site.fleet.server_ns, squid.port)
            code, rows = site.rows(*only, env={"HTTPS_PROXY": squid.url})
            assert code == 0, rows
            assert "via the proxy" in rows["controller:tcp"]["title"]
            assert rows["controller:credential"]["status"] == "pass"
            assert any(f":{site.lab.controller.port}" in line for line in squid.requests("CONNECT"))
        except ProxyError as exc:
            pytest.skip(f"squid cannot run on this machine: {exc}")
        finally:
            if relay is not None:
                relay.close()
            squid.stop()


def test_ssh_rows_need_an_ssh_server_not_just_an_open_port(site: Site) -> None:
    state = site.tmp / "ssh-state"
    state.mkdir(exist_ok=True)
    host = site.fleet.hosts[0]
    save_inventory(
        state / "inventory.json",
        [
            host.asset(),
            host.asset(asset_id=50, name="closed", ssh_port=2222),
            host.asset(asset_id=51, name="notssh", address="127.0.0.1", ssh_port=5985),  # the WinRM stand-in
        ],
    )
    only = [n for n in CHECK_NAMES if n != "ssh"]
    checks = site.fleet.call(
        lambda: run_segment_checks(SegmentTargets(state), {}, skip=only, timeout=3, parallel=2)
    )
    got = {c.id: c for c in checks}
    assert got["ssh:host0"].status == "pass"
    assert got["ssh:closed"].status == "fail" and "refused" in got["ssh:closed"].detail
    assert got["ssh:notssh"].status == "fail" and "no SSH banner" in got["ssh:notssh"].detail


def test_dns_rows_send_real_queries(site: Site) -> None:
    def ask() -> tuple[Any, Any, Any]:
        return (
            dns_query("127.0.0.1", CTL_NAME, 3),
            dns_query("127.0.0.1", "unknown.zgct.test", 3),
            dns_query("127.0.0.2", CTL_NAME, 1, port=5353),  # nobody there
        )

    known, unknown, nobody = site.fleet.call(ask)
    assert known.rcode == 0 and known.answers == 1 and known.latency_ms is not None
    assert unknown.rcode_name == "NXDOMAIN" and unknown.answers == 0
    assert nobody.rcode is None and nobody.error


def test_options_are_validated(site: Site, tmp_path: Path) -> None:
    code, text = site.zg("--skip", "bogus")
    assert code == 2 and "known: controller" in text
    code, text = site.zg("--winrm", "bad host\x01")
    assert code == 2
    assert parse_winrm("win1.corp") == ("win1.corp", 5985)
    assert parse_winrm("[fd00::5]:5986") == ("fd00::5", 5986)
    assert parse_winrm("fd00::5") == ("fd00::5", 5985)
    with pytest.raises(ValueError):
        parse_winrm("host:99999")
    conf = tmp_path / "resolv.conf"
    conf.write_text(
        "# x\nnameserver 10.0.0.1\nnameserver bogus\nnameserver ::1\nnameserver 1.1.1.1\nnameserver 9.9.9.9\n"
    )
    assert read_resolvers(conf) == ["10.0.0.1", "::1", "1.1.1.1"]
    conf.write_text("search corp\n")
    assert read_resolvers(conf) == ["127.0.0.1"]
