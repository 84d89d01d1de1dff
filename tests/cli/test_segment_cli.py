"""``zerogate segment``: help that answers questions, flag validation, the sudoers
line, ``run --check`` and break-glass from the cached inventory (no controller)."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from zerogate.agent import settings as settings_mod
from zerogate.agent.enrollment import SSH_KEY, SSH_PUBLIC_KEY, ensure_ssh_key
from zerogate.cli.main import app
from zerogate.model.snapshot import SegmentAsset
from zerogate.segment.breakglass import INVENTORY, save_inventory

ENV = {"COLUMNS": "200"}


@pytest.fixture(autouse=True)
def _no_host_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    monkeypatch.setattr(settings_mod, "CONFIG_DIR", etc)
    for name in list(os.environ):
        if name.startswith("ZEROGATE_SEGMENT_"):
            monkeypatch.delenv(name)


def invoke(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(app, list(args), env=ENV)
    return r.exit_code, r.output


def test_help_names_every_command_and_what_they_need() -> None:
    code, out = invoke("segment", "--help")
    assert code == 0
    for command in ("enroll", "run", "break-glass", "sudoers"):
        assert command in out
    code, out = invoke("segment", "break-glass", "--help")
    assert code == 0 and "controller is down" in out and "--all" in out and "--asset" in out
    code, out = invoke("segment", "enroll", "--help")
    assert code == 0 and "authorized_keys" in out and "sudoers" in out


def test_sudoers_grants_exactly_nft_conntrack_and_ss() -> None:
    code, out = invoke("segment", "sudoers", "--user", "zgseg")
    assert code == 0
    line = out.strip()
    assert line.startswith("zgseg ALL=(root) NOPASSWD: /usr/sbin/nft -f -,")
    commands = line.split("NOPASSWD: ", 1)[1].split(", ")
    assert {c.split()[0] for c in commands} == {"/usr/sbin/nft", "/usr/sbin/conntrack", "/usr/bin/ss"}


def test_run_check_validates_without_starting(tmp_path: Path) -> None:
    code, out = invoke("segment", "run", "--check", "--state-dir", str(tmp_path), "--max-ssh-operations", "8")
    assert code == 0, out
    assert (
        "max_ssh_operations" in out and "8" in out and "the segment settings are valid (no directory)" in out
    )
    path = tmp_path / "segment.toml"
    path.write_text('[segment]\ndirectory_url = "ldap://127.0.0.1:3389"\n')
    code, out = invoke("segment", "run", "--check", "--config", str(path))
    assert code == 1 and "must be set too" in out
    code, out = invoke("segment", "run", "--check", "--max-ssh-operations", "0")
    assert code != 0


def test_run_refuses_a_state_dir_without_enrollment(tmp_path: Path) -> None:
    code, out = invoke("segment", "run", "--state-dir", str(tmp_path))
    assert code == 1 and "zerogate segment enroll" in out


def test_enroll_refuses_a_bad_install_string(tmp_path: Path) -> None:
    code, out = invoke("segment", "enroll", "not-an-install-string", "--state-dir", str(tmp_path))
    assert code == 1 and out.strip()
    assert not (tmp_path / SSH_KEY).exists()


def test_the_ssh_key_pair_is_private_and_kept_on_reenrollment(tmp_path: Path) -> None:
    public, made = ensure_ssh_key(tmp_path, "zerogate-segment-seg")
    assert made and public.startswith("ssh-ed25519 ") and public.endswith(" zerogate-segment-seg")
    assert (tmp_path / SSH_KEY).stat().st_mode & 0o777 == 0o600
    assert (tmp_path / SSH_PUBLIC_KEY).read_text().strip() == public
    assert ensure_ssh_key(tmp_path, "other") == (public, False)


def test_break_glass_needs_a_choice_of_assets(tmp_path: Path) -> None:
    code, out = invoke("segment", "break-glass", "--state-dir", str(tmp_path))
    assert code == 1 and "--asset NAME" in out
    code, out = invoke("segment", "break-glass", "--all", "--asset", "a", "--state-dir", str(tmp_path))
    assert code == 1
    code, out = invoke("segment", "break-glass", "--all", "--state-dir", str(tmp_path))
    assert code == 1 and "zerogate segment enroll" in out  # no key yet


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_break_glass_works_from_the_inventory_and_says_per_host_what_failed(tmp_path: Path) -> None:
    ensure_ssh_key(tmp_path, "zerogate-segment-seg")
    asset = SegmentAsset.model_validate(
        {
            "asset_id": 1, "name": "web1", "address": "127.0.0.1", "ssh_port": _closed_port(),
            "ssh_user": "root", "host_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPinnedPinnedPinnedPinned",
            "mode": "protected", "rules_revision": 1, "rules": [], "jump_hosts": [],
        }
    )  # fmt: skip
    save_inventory(tmp_path / INVENTORY, [asset])
    code, out = invoke("segment", "break-glass", "--asset", "nope", "--state-dir", str(tmp_path))
    assert code == 1 and "not in the cached inventory" in out and "nope" in out
    r = CliRunner().invoke(
        app, ["segment", "break-glass", "--all", "--state-dir", str(tmp_path), "--json"], env=ENV
    )
    assert r.exit_code == 1
    (row,) = json.loads(r.stdout)
    assert (row["asset"], row["result"]) == ("web1", "failed") and row["detail"]
