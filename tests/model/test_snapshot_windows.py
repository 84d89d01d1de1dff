"""Windows segment assets in the snapshot (schema 1.1): ``os`` and the listener
certificate's ``x509-sha256`` pin round-trip; an asset without ``os`` is Linux; the
account and the pin must be of the asset's kind (a Windows account never reaches ssh)."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest

from zerogate.model.snapshot import InvalidSnapshot, parse_snapshot
from zerogate.segment.windows.winrm import pin_of

SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKk4w0o0Sx3m8Hn7c1bVtq4fXc9o0C8w9h3G0dY9n1aB"
PIN = pin_of(b"a certificate's DER").key  # what WinRmHostOps.scan_host_key reports


def wire(**fields: Any) -> dict[str, Any]:
    asset = {
        "asset_id": 8, "name": "win-1", "address": "192.0.2.20", "ssh_port": 5986,
        "ssh_user": "CORP\\zgsvc", "host_key": PIN, "mode": "protected", "rules_revision": 2,
        "rules": [{"rule_id": 1, "action": "accept", "protocol": "tcp", "port_first": 3389,
                   "port_last": 3389, "sources": ["198.51.100.0/24"]}],
        "jump_hosts": [], "os": "windows",
    } | fields  # fmt: skip
    return {"schema_version": "1.1", "role": "segment", "revision": 4, "device_id": 9, "name": "seg-1",
            "assets": [asset]}  # fmt: skip


def test_a_windows_asset_with_its_certificate_pin_round_trips() -> None:
    snap = parse_snapshot("segment", wire())
    (asset,) = snap.assets
    assert (asset.os, asset.host_key, asset.ssh_user) == ("windows", PIN, "CORP\\zgsvc")
    sent = json.loads(json.dumps(snap.model_dump(mode="json")))
    assert sent["assets"][0]["os"] == "windows" and sent["assets"][0]["host_key"] == PIN
    assert parse_snapshot("segment", sent) == snap
    digest = base64.b64decode(PIN.split()[1])
    assert digest == hashlib.sha256(b"a certificate's DER").digest()


def test_an_asset_without_os_is_linux() -> None:
    data = wire(ssh_port=22, ssh_user="zerogate-segment", host_key=SSH_KEY)
    del data["assets"][0]["os"]
    (asset,) = parse_snapshot("segment", data).assets
    assert asset.os == "linux"


@pytest.mark.parametrize(
    "fields",
    [
        {"os": "linux"},  # a certificate pin (and a Windows account) on a Linux asset
        {"os": "linux", "ssh_user": "zerogate-segment"},  # the pin alone
        {"host_key": SSH_KEY},  # an SSH key on a Windows asset
        {"host_key": PIN[:-2] + "="},  # 42 characters
        {"host_key": PIN + "\nssh-rsa AAAA"},
        {"host_key": "x509-sha1 " + PIN.split()[1]},
        {"ssh_user": "CORP\\zg svc"},
        {"ssh_user": "CORP\\zg;rm"},
        {"ssh_user": "a" * 33},
        {"ssh_user": "-oProxyCommand=x"},
        {"os": "macos"},
    ],
)
def test_the_account_and_pin_must_fit_the_os(fields: dict[str, Any]) -> None:
    with pytest.raises(InvalidSnapshot):
        parse_snapshot("segment", wire(**fields))


def test_a_newer_minor_may_add_fields_but_not_loosen_the_os() -> None:
    data = wire()
    data["schema_version"] = "1.9"
    data["assets"][0]["winrm_extra"] = True  # unknown in a newer minor: ignored
    assert parse_snapshot("segment", data).assets[0].os == "windows"
    data["assets"][0]["os"] = "plan9"
    with pytest.raises(InvalidSnapshot):
        parse_snapshot("segment", data)
