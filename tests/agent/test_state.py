"""The state directory: private writes, what an enrollment leaves, and an identity
that says what is missing."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from zerogate.agent.state import DeviceIdentity, NotEnrolled, StateDir, save_identity, write_private


def test_write_private_replaces_the_file_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "snapshot.json"
    path.write_text("old")
    path.chmod(0o644)
    write_private(path, '{"revision": 1}')
    assert path.read_text() == '{"revision": 1}'
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["snapshot.json"]  # no temporary file left


def test_identity_load_explains_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(NotEnrolled, match="holds no enrolled gateway: run 'zerogate gateway enroll"):
        DeviceIdentity.load(tmp_path, "gateway")
    (tmp_path / "device.json").write_text(json.dumps({"role": "connector"}))
    with pytest.raises(NotEnrolled, match="holds a connector, not a gateway"):
        DeviceIdentity.load(tmp_path, "gateway")


def test_save_identity_writes_every_file_with_its_mode_and_the_marker_last(tmp_path: Path) -> None:
    state_dir = tmp_path / "gateway"
    save_identity(
        state_dir,
        key_pem=b"KEY",
        wg_private="wgpriv",
        credential="zgd_x",
        certificate="CERT",
        ca_pem=b"CA",
        info={"role": "gateway", "name": "edge", "device_id": 7, "controller_url": "https://c"},
    )
    state = StateDir(state_dir)
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    for f in (StateDir.DEVICE_KEY, StateDir.WG_KEY, StateDir.CREDENTIAL, StateDir.DEVICE_CERT, StateDir.CA):
        assert stat.S_IMODE((state / f).stat().st_mode) == f.mode, f.name
    assert stat.S_IMODE((state / StateDir.DEVICE).stat().st_mode) == 0o644
    identity = DeviceIdentity.load(state_dir, "gateway")
    assert (identity.name, identity.device_id, identity.credential, identity.wg_private_key) == (
        "edge",
        7,
        "zgd_x",
        "wgpriv",
    )
    assert identity.ca_pem == b"CA" and identity.state == state
    (state / StateDir.WG_KEY).chmod(0o644)
    with pytest.raises(NotEnrolled, match=r"wg\.key is readable by others: chmod 600 it"):
        DeviceIdentity.load(state_dir, "gateway")
