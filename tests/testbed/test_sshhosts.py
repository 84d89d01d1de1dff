"""The SSH host fleet: built in parallel, every host's sshd really answers, and
close removes every namespace, process, account and sudoers file it made."""

from __future__ import annotations

import os
import pwd
import shutil
from pathlib import Path

import pytest

from zerogate.netops import netns
from zerogate.testbed.sshhosts import FleetError, SshFleet

pytestmark = [
    pytest.mark.xdist_group("segment-hosts"),
    pytest.mark.skipif(
        os.geteuid() != 0
        or not all(shutil.which(t) for t in ("ip", "nft", "ssh-keyscan", "useradd", "visudo")),
        reason="needs root, iproute2, nftables, openssh, useradd and visudo",
    ),
]


def test_a_fleet_comes_up_and_goes_away_without_a_trace(tmp_path: Path) -> None:
    fleet = SshFleet(3, tmp_path, sudo_user=True)
    with fleet:
        names = set(netns.list_namespaces())
        assert {fleet.server_ns, fleet.client_ns(0), *(h.ns for h in fleet.hosts)} <= names
        assert len({h.address for h in fleet.hosts}) == 3 and len({h.host_key for h in fleet.hosts}) == 3
        for host in fleet.hosts:  # each sshd answers from the server's side with its own key
            scan = fleet.run(fleet.server_ns, ["ssh-keyscan", "-t", "ed25519", str(host.address)])
            assert host.host_key in scan.stdout
        # A login runs the command without the machine's rc files (sshd sets SHLVL=1, so
        # root's bash skips ~/.bashrc): nothing there can stall a test's SSH round trip.
        host = fleet.hosts[0]
        login = fleet.run(
            fleet.server_ns,
            ["ssh", "-F", "/dev/null", "-i", str(fleet.key), "-o", "BatchMode=yes",
             "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
             f"root@{host.address}", 'echo "shlvl=$SHLVL pyenv=${PYENV_SHELL:-none}"'],
        )  # fmt: skip
        assert login.stdout.split() == ["shlvl=2", "pyenv=none"], login.stdout
        user = fleet.user
        assert user is not None and pwd.getpwnam(user)
        sudoers = Path(f"/etc/sudoers.d/{user}")
        assert sudoers.read_text().startswith(f"{user} ALL=(root) NOPASSWD: /usr/sbin/nft -f -")
        pids = [h.sshd.process.pid for h in fleet.hosts if h.sshd]
    assert not any(n.startswith(fleet.prefix) for n in netns.list_namespaces())
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)
    assert not sudoers.exists()
    with pytest.raises(KeyError):
        pwd.getpwnam(user)


def test_a_fleet_that_cannot_be_built_says_why(tmp_path: Path) -> None:
    with pytest.raises(FleetError, match="1 to 1024 hosts"), SshFleet(1024, tmp_path):
        pass
