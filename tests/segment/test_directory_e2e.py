"""End to end with a directory: a real ``slapd`` (:class:`zerogate.testbed.slapd.Slapd`)
holds the computer entry of a real SSH host and the "monitored" and "protected"
groups; a real controller; a real segment server (``zerogate segment enroll`` and
``run``, configured with the directory) in the fleet's server namespace, reaching
the controller and slapd through relays; the host managed through the product's
default account ``zerogate-segment`` with ``sudo -n``.

The customer puts the computer into the monitored group: it becomes an asset
within the sync interval; out of the group it is removed; back in, the admin
trusts it, lets it learn, approves and protects it, and the server writes it into
the protected group. Out of the monitored group while protected it is kept and
flagged; unprotected, it leaves the protected group and the inventory. The
wiring (relays into the server namespace, enroll, run) is
:mod:`zerogate.testbed.segmentlab`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from zerogate.netops.controller_api import ApiError
from zerogate.netops.ldap import dn_key
from zerogate.testbed.segmentlab import FAST_SETTINGS, Relay, SegmentLab, forward_into, host_key_fingerprint
from zerogate.testbed.slapd import SUFFIX, Slapd, computer_entry, group_entry
from zerogate.testbed.sshhosts import SshFleet, SshHost

TOOLS = ("ip", "nft", "conntrack", "ss", "ssh", "ssh-keyscan", "sudo", "useradd", "visudo", "slapd",
         "slapadd", "ldapmodify", "ldapsearch", "curl")  # fmt: skip
pytestmark = [
    pytest.mark.xdist_group("segment-hosts"),
    pytest.mark.skipif(
        os.geteuid() != 0
        or not all(shutil.which(t, path="/usr/sbin:/usr/bin:/sbin:/bin") for t in TOOLS)
        or not Path("/usr/sbin/sshd").exists(),
        reason="needs root, namespaces, nftables, conntrack, openssh, sudo, slapd and ldap-utils",
    ),
]

# The account a directory-sourced asset is managed through: the controller's default
# (directory members carry no login). The fleet creates it, with exactly the segment
# sudoers line, and removes it (and its sudoers file) on close.
ACCOUNT = "zerogate-segment"
WEB = "web1"  # the computer's cn: the asset's name
SERVED = 8080
SYNC_INTERVAL = 2.0
# A membership change reaches the controller within one sync interval plus a report:
# the debounce (0.5 s), one HTTPS request and this test's polling, on a shared machine.
REPORT_SLACK = 15.0
FAST = {"ZEROGATE_SEGMENT_DIRECTORY_SYNC_INTERVAL": str(SYNC_INTERVAL)}


class Directory:
    """The test's slapd: a computer entry for the fleet's host, the two groups, and a
    writer account that may change the protected group's members and nothing else
    (the ACL the README asks for)."""

    def __init__(self, host: SshHost) -> None:
        groups, computers = f"ou=groups,{SUFFIX}", f"ou=computers,{SUFFIX}"
        self.computer, attrs = computer_entry(WEB, computers, address=str(host.address))
        self.monitored, monitored = group_entry("zerogate-monitored", groups)
        self.protected, protected = group_entry("zerogate-protected", groups)
        self.entries = [(self.computer, attrs), (self.monitored, monitored), (self.protected, protected)]
        self.slapd = Slapd(writer_groups=[self.protected])

    def members(self, group: str) -> set[tuple[tuple[str, str], ...]]:
        """The group's member DNs, read back with the real ldapsearch (as comparison keys)."""
        out = self.slapd.ldapsearch(group, "(objectClass=*)", "member", scope="base")
        return {
            dn_key(line.split(":", 1)[1].strip()) for line in out.splitlines() if line.startswith("member: ")
        }

    def in_group(self, group: str) -> bool:
        return dn_key(self.computer) in self.members(group)

    def change_monitored(self, op: str) -> None:
        """The customer adds the computer to the monitored group, or deletes it from it."""
        self.slapd.ldapmodify(
            f"dn: {self.monitored}\nchangetype: modify\n{op}: member\nmember: {self.computer}\n"
        )

    def settings(self, password_file: Path) -> dict[str, str]:
        """The segment server's directory settings (through the environment): the writer account."""
        password_file.write_text(self.slapd.writer.password)
        password_file.chmod(0o600)
        return {
            "ZEROGATE_SEGMENT_DIRECTORY_URL": f"ldap://127.0.0.1:{self.slapd.port}",
            "ZEROGATE_SEGMENT_DIRECTORY_BIND_DN": self.slapd.writer.dn,
            "ZEROGATE_SEGMENT_DIRECTORY_PASSWORD_FILE": str(password_file),
            "ZEROGATE_SEGMENT_DIRECTORY_BASE_DN": self.slapd.suffix,
            "ZEROGATE_SEGMENT_DIRECTORY_MONITORED_GROUP_DN": self.monitored,
            "ZEROGATE_SEGMENT_DIRECTORY_PROTECTED_GROUP_DN": self.protected,
        }


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[SshFleet]:
    if subprocess.run(["id", ACCOUNT], capture_output=True, check=False).returncode == 0:
        pytest.skip(f"an account {ACCOUNT!r} exists on this machine; this test creates and removes its own")
    with SshFleet(1, tmp_path / "fleet", clients=1, sudo_user=True, prefix=ACCOUNT) as f:
        yield f


def curl(fleet: SshFleet, host: SshHost, port: int) -> bool:
    argv = ["curl", "-sS", "--noproxy", "*", "-o", "/dev/null", "-m", "3", f"http://{host.address}:{port}/"]
    return fleet.run(fleet.client_ns(0), argv, check=False, timeout=10).returncode == 0


def test_directory_groups_drive_the_assets_and_record_protection(fleet: SshFleet, tmp_path: Path) -> None:
    host = fleet.hosts[0]
    assert fleet.user == ACCOUNT
    web = subprocess.Popen(
        ["ip", "netns", "exec", host.ns, sys.executable, "-m", "http.server", str(SERVED),
         "--bind", str(host.address)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path,
    )  # fmt: skip
    directory = Directory(host)
    slapd = directory.slapd
    lab = SegmentLab(fleet, tmp_path)
    slapd_relay: Relay | None = None
    try:
        slapd.start(directory.entries)
        lab.start_controller()
        api = lab.api.call

        def asset() -> dict[str, Any] | None:
            try:
                return lab.api.asset(WEB)
            except ApiError as exc:
                if exc.status == 404:
                    return None
                raise

        def field(name: str) -> Any:
            a = asset()
            return None if a is None else a[name]

        # the segment server: enrolled with the fleet's key pair, the directory configured
        lab.enroll_server(ACCOUNT)
        slapd_relay = forward_into(fleet.server_ns, slapd.port)
        lab.start_server(FAST_SETTINGS | FAST | directory.settings(tmp_path / "directory.password"))
        log = lab.server.log
        lab.wait("the first directory read", lambda: b"0 monitored computer(s)" in log.read_bytes())
        assert asset() is None

        # the customer adds the computer to the monitored group: an asset within a sync interval
        directory.change_monitored("add")
        took = lab.wait(
            "the asset from the directory", lambda: asset() is not None, SYNC_INTERVAL + REPORT_SLACK
        )
        found = asset()
        assert found is not None
        assert (found["source"], found["address"], found["ssh_user"], found["mode"]) == (
            "directory", str(host.address), ACCOUNT, "monitored",
        )  # fmt: skip
        assert dn_key(found["directory_dn"]) == dn_key(directory.computer)
        print(f"asset appeared {took:.1f} s after the group changed (sync interval {SYNC_INTERVAL:g} s)")

        # ... and takes it out again: the asset (monitored, nothing enforced) goes
        directory.change_monitored("delete")
        lab.wait("the asset to go", lambda: asset() is None, SYNC_INTERVAL + REPORT_SLACK)
        directory.change_monitored("add")
        lab.wait("the asset again", lambda: asset() is not None, SYNC_INTERVAL + REPORT_SLACK)

        # the admin checks the key the server saw against the host, and trusts it
        lab.wait("the offered host key", lambda: bool(field("observed_host_key_fingerprint")))
        offered = field("observed_host_key_fingerprint")
        assert offered == host_key_fingerprint(fleet, host)
        lab.api.trust(WEB, offered)
        lab.wait("the first contact (sudo -n)", lambda: field("state") == "ready")

        # learning, a proposal from the client's traffic, approve, protect
        lab.api.set_mode(WEB, "learning", window_seconds=3600)
        lab.wait("learning", lambda: field("state") == "learning")

        def learned() -> bool:
            assert curl(fleet, host, SERVED)
            return any(f["port"] == SERVED for f in lab.api.flows(WEB))

        lab.wait("the learned flow", learned)
        proposal = lab.api.propose(WEB)
        rule = next(r for r in proposal["proposed"] if r["port_first"] <= SERVED <= r["port_last"])
        lab.api.approve(WEB, rule["id"])
        assert not directory.in_group(directory.protected)
        lab.api.set_mode(WEB, "protected")
        lab.wait("enforcement", lambda: field("state") == "enforced", 120)
        assert curl(fleet, host, SERVED)

        # the product writes the computer into the protected group
        lab.wait("the protected group", lambda: directory.in_group(directory.protected), 30)

        # out of the monitored group while protected: kept, flagged, still protected
        directory.change_monitored("delete")
        lab.wait("the asset flagged", lambda: field("left_directory") is True, SYNC_INTERVAL + REPORT_SLACK)
        assert (field("mode"), field("state")) == ("protected", "enforced")
        assert directory.in_group(directory.protected)

        # unprotect: the host's table goes, the computer leaves the protected group, and
        # the asset (no longer in the monitored group, enforcing nothing) leaves the inventory
        api("POST", f"/v1/segment/assets/{WEB}/unprotect", {})
        lab.wait("the protected group without it", lambda: not directory.in_group(directory.protected))
        lab.wait("the asset to go", lambda: asset() is None)
        lab.wait(
            "the host without our table",
            lambda: fleet.nft(host, "list", "table", "inet", "zerogate_segment").returncode != 0,
        )
        assert directory.members(directory.protected) == {dn_key(directory.protected)}  # the placeholder
    finally:
        lab.close()
        if slapd_relay is not None:
            slapd_relay.close()
        slapd.stop()
        if web.poll() is None:
            web.kill()
            web.wait(5)
