"""How the segment server talks to an asset (pure): the pinned known_hosts line, the
ssh command line (shared session vs the check's fresh one), ``sudo -n`` with the
exact argv the sudoers line grants, and the rollback armed for a non-root login."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from zerogate.deploy.firewall.remote_timer import arm_argv
from zerogate.model.snapshot import SegmentAsset
from zerogate.segment.ssh import (
    NFT,
    PRIVILEGED,
    Access,
    AssetTarget,
    HostKeyUnknown,
    known_hosts_line,
    sudoers_line,
)

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHLXlK7fGo4AzecNTPiaw7sE5YKflNkhPHdUOqxwxVqt"


def asset(**fields: Any) -> SegmentAsset:
    data: dict[str, Any] = {
        "asset_id": 7, "name": "db1", "address": "192.0.2.10", "ssh_port": 22, "ssh_user": "root",
        "host_key": KEY, "mode": "protected", "rules_revision": 1, "rules": [], "jump_hosts": [],
    }  # fmt: skip
    data.update(fields)
    return SegmentAsset.model_validate(data)


def target(tmp_path: Path, **fields: Any) -> AssetTarget:
    (tmp_path / "id").write_text("key")
    return AssetTarget(asset(**fields), Access(tmp_path / "id", tmp_path / "state"))


def test_known_hosts_pins_the_assets_key_for_the_address_and_port_dialled() -> None:
    assert known_hosts_line(asset()) == f"192.0.2.10 {KEY}\n"
    assert known_hosts_line(asset(ssh_port=2222, address="2001:db8::5")) == f"[2001:db8::5]:2222 {KEY}\n"
    with pytest.raises(HostKeyUnknown, match="no host key pinned"):
        known_hosts_line(asset(host_key=None))


def test_ssh_pins_the_key_and_the_check_never_reuses_the_shared_session(tmp_path: Path) -> None:
    t = target(tmp_path)
    shared, fresh = t.ssh_argv(["true"]), t.ssh_argv(["true"], fresh=True)
    for argv in (shared, fresh):
        assert (
            "StrictHostKeyChecking=yes" in argv
            and "BatchMode=yes" in argv
            and argv[1:3] == ["-F", "/dev/null"]
        )
        assert f"UserKnownHostsFile={tmp_path / 'state' / 'known_hosts' / '7'}" in argv
    assert "ControlMaster=auto" in shared and f"ControlPath={t.control_path}" in shared
    assert "ControlMaster=no" in fresh and "ControlPath=none" in fresh
    assert (tmp_path / "state" / "known_hosts" / "7").read_text() == f"192.0.2.10 {KEY}\n"


def test_a_chosen_key_exchange_applies_to_the_shared_session_and_the_check(tmp_path: Path) -> None:
    assert not any(a.startswith("KexAlgorithms=") for a in target(tmp_path).ssh_argv(["true"]))
    (tmp_path / "id").write_text("key")
    access = Access(tmp_path / "id", tmp_path / "state", kex_algorithms="curve25519-sha256")
    t = AssetTarget(asset(), access)
    for argv in (t.ssh_argv(["true"]), t.ssh_argv(["true"], fresh=True)):
        assert "KexAlgorithms=curve25519-sha256" in argv
        assert argv.index("KexAlgorithms=curve25519-sha256") < argv.index("--")


def test_root_runs_nft_as_is_and_another_login_through_sudo_with_stdin(tmp_path: Path) -> None:
    root = target(tmp_path)
    assert root._narrowed([NFT, "-f", "/x/applied.nft"]) == [NFT, "-f", "/x/applied.nft"]
    user = target(tmp_path, ssh_user="zgseg")
    assert user._narrowed([NFT, "list", "tables"]) == ["sudo", "-n", NFT, "list", "tables"]
    feed = user._narrowed([NFT, "-c", "-f", "/x/applied.nft"])
    assert feed[:2] == ["sh", "-c"] and feed[4:] == ["/x/applied.nft", "sudo", "-n", NFT, "-c", "-f", "-"]
    assert user.timer_mode() == "detached" and user.rollback_loader == ("sudo", "-n", NFT, "-f", "-")
    # every privileged argv the target runs is one the sudoers line grants, word for word
    granted = set(PRIVILEGED)
    assert (
        (NFT, "-c", "-f", "-") in granted
        and (NFT, "-f", "-") in granted
        and (NFT, "list", "tables") in granted
    )


def test_sudoers_line_names_exact_commands_and_nothing_else() -> None:
    line = sudoers_line("zgseg")
    assert line.startswith("zgseg ALL=(root) NOPASSWD: /usr/sbin/nft -f -, /usr/sbin/nft -c -f -, ")
    assert "/usr/sbin/conntrack -L -o extended" in line and "/usr/bin/ss -H -tuln -p" in line
    assert "ALL" not in line.split("NOPASSWD:")[1] and "*" not in line
    if shutil.which("visudo"):
        r = subprocess.run(
            ["visudo", "-c", "-q", "-f", "-"], input=line + "\n", text=True, capture_output=True
        )
        assert r.returncode == 0, r.stderr


def test_the_stdin_rollback_is_valid_shell_and_feeds_the_snapshot_to_the_loader(tmp_path: Path) -> None:
    snapshot, marker, pidfile = tmp_path / "snap.nft", tmp_path / "m.fired", tmp_path / "r.pid"
    snapshot.write_text("table inet x {}\n")
    argv = arm_argv("detached", "zerogate-firewall-rollback-1-check", 1, str(snapshot), str(marker), str(pidfile),
                    ("sh", "-c", 'cat > "$0"', str(tmp_path / "loaded")))  # fmt: skip
    assert argv[:3] == ["setsid", "-f", "sh"]
    assert subprocess.run(["sh", "-n", "-c", argv[4]], check=False).returncode == 0
    subprocess.run(argv, check=True, timeout=10)
    deadline = time.monotonic() + 10
    while (not marker.exists() or pidfile.exists()) and time.monotonic() < deadline:
        time.sleep(0.05)  # polling for the marker it writes when fired, then the PID file it removes last
    assert marker.read_text().strip() == "0"
    assert (tmp_path / "loaded").read_text() == "table inet x {}\n" and not pidfile.exists()
    with pytest.raises(ValueError, match="detached"):
        arm_argv("systemd", "n", 1, "s", "m", "p", ("sudo", "-n", NFT, "-f", "-"))
