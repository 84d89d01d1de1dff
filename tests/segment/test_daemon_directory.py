"""The segment server's protected-group writes, against fake host operations and a
fake directory: an asset the controller stops listing leaves the protected group,
even when it went before the server saw it unprotected; a revoked server leaves
the group alone (its hosts keep their tables)."""

from __future__ import annotations

import time
from collections.abc import Set as AbstractSet
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from zerogate.agent.state import DeviceIdentity
from zerogate.model.segment_report import PreflightItem
from zerogate.model.snapshot import RevokedSnapshot, SegmentAsset, SegmentSnapshot
from zerogate.netops.ldap import Computer, DirectoryUnreachable, MonitoredRead, dn_key
from zerogate.segment.daemon import SegmentDaemon
from zerogate.segment.hosts import Collection, Enforcement, ScannedKey
from zerogate.segment.preflight import Preflight

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPinnedPinnedPinnedPinnedPinned0000"
DN = "cn=host1,ou=computers,dc=example,dc=org"
GOOD = Preflight((PreflightItem(name="sshd_ports", ok=True),), (22,), ())


def asset(asset_id: int = 1, **fields: Any) -> SegmentAsset:
    data: dict[str, Any] = {
        "asset_id": asset_id, "name": f"host{asset_id}", "address": f"10.99.0.{asset_id + 1}",
        "ssh_port": 22, "ssh_user": "root", "host_key": KEY, "mode": "monitored",
        "rules_revision": 1, "rules": [], "jump_hosts": [],
    }  # fmt: skip
    data.update(fields)
    return SegmentAsset.model_validate(data)


class Ops:
    """Host operations that all succeed at once."""

    def scan_host_key(self, a: SegmentAsset) -> ScannedKey:
        return ScannedKey(KEY, "SHA256:abc")

    def preflight(self, a: SegmentAsset) -> Preflight:
        return GOOD

    def start_learning(self, a: SegmentAsset) -> None:
        pass

    def stop_learning(self, a: SegmentAsset) -> None:
        pass

    def collect(self, a: SegmentAsset, outbound: bool) -> Collection:
        return Collection((), (), ())

    def enforce(self, a: SegmentAsset, preflight: Preflight) -> Enforcement:
        return Enforcement(a.asset_id, a.rules_revision, "applied", "checked")

    def unprotect(self, a: SegmentAsset) -> None:
        pass

    def retain(self, asset_ids: AbstractSet[int]) -> None:
        pass


class Directory:
    """host1 is a member of the monitored group until ``monitored`` is emptied."""

    def __init__(self) -> None:
        self.monitored: tuple[Computer, ...] = (Computer(DN, "host1"),)
        self.protected: set[str] = set()
        self.down = False

    def read_monitored(self) -> MonitoredRead:
        return MonitoredRead(self.monitored, len(self.monitored))

    def protected_members(self) -> tuple[str, ...]:
        return tuple(sorted(self.protected))

    def find_computers(self, name: str) -> tuple[Computer, ...]:
        return (Computer(DN, "host1"),) if name == "host1" else ()

    def add_protected(self, dn: str) -> bool:
        self.protected.add(dn)
        return True

    def remove_protected(self, dn: str) -> bool:
        if self.down:
            raise DirectoryUnreachable("the directory stopped answering")
        self.protected.discard(dn)
        return True

    def keys(self) -> set[tuple[tuple[str, str], ...]]:
        return {dn_key(dn) for dn in self.protected}


def daemon(tmp: Path, ldap: Directory) -> SegmentDaemon:
    identity = DeviceIdentity(tmp, "segment", "seg", 7, "https://127.0.0.1:1", b"", "x", "")
    return SegmentDaemon(identity, Ops(), directory=ldap)


def snapshot(*assets: SegmentAsset, revision: int) -> SegmentSnapshot:
    return SegmentSnapshot(revision=revision, device_id=7, name="seg", assets=assets)


def settle(d: SegmentDaemon) -> None:
    with ThreadPoolExecutor(2) as pool:
        d.round(pool)
        end = time.monotonic() + 5
        while d.in_flight:
            assert time.monotonic() < end, "the asset's steps did not finish"
            time.sleep(0.01)


def protected_host1(tmp: Path, ldap: Directory) -> SegmentDaemon:
    d = daemon(tmp, ldap)
    d.apply(snapshot(asset(mode="protected"), revision=1))
    settle(d)
    d.sync_directory()
    assert ldap.protected == {DN}
    return d


def test_an_asset_dropped_before_its_unprotect_was_seen_leaves_the_protected_group(tmp_path: Path) -> None:
    ldap = Directory()
    d = protected_host1(tmp_path, ldap)
    # the admin unprotected it and the controller dropped it (it left the monitored group)
    # before this server saw the unprotect: the next snapshot simply no longer lists it
    ldap.monitored = ()
    d.apply(snapshot(revision=2))
    assert d.directory_wake.is_set()  # the directory loop acts at once
    d.update_protected_group(ldap.keys())
    assert ldap.protected == set() and d.departed == {}


def test_a_departure_the_directory_refused_is_tried_again(tmp_path: Path) -> None:
    ldap = Directory()
    d = protected_host1(tmp_path, ldap)
    d.apply(snapshot(revision=2))
    ldap.down = True
    d.update_protected_group(ldap.keys())
    assert ldap.protected == {DN} and d.departed == {1: "host1"}
    ldap.down = False
    d.sync_directory()
    assert ldap.protected == set() and d.departed == {}


def test_a_revoked_server_leaves_the_protected_group_alone(tmp_path: Path) -> None:
    ldap = Directory()
    d = protected_host1(tmp_path, ldap)
    d.apply(RevokedSnapshot(role="segment", device_id=7, name="seg"))
    d.sync_directory()
    assert ldap.protected == {DN} and d.departed == {}


def test_a_name_listed_again_is_decided_by_its_new_asset(tmp_path: Path) -> None:
    ldap = Directory()
    d = protected_host1(tmp_path, ldap)
    ldap.down = True  # the departure cannot be written ...
    d.apply(snapshot(revision=2))
    d.update_protected_group(ldap.keys())
    # ... and meanwhile the computer came back as a new asset, protected again
    ldap.down = False
    d.apply(snapshot(asset(2, name="host1", mode="protected"), revision=3))
    settle(d)
    d.sync_directory()
    assert ldap.protected == {DN} and d.departed == {}
