"""The segment server's decisions per asset, against a fake host-ops backend:
host keys, first contact, learning and its flows, enforcement once per revision,
failures that stay on their asset, reports and the directory's protected group."""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Set as AbstractSet
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from zerogate.agent.state import DeviceIdentity
from zerogate.deploy.firewall.errors import CheckFailedRolledBack, TargetUnreachable
from zerogate.model.segment import Flow
from zerogate.model.segment_report import PreflightItem, SegmentReport
from zerogate.model.snapshot import SegmentAsset, SegmentSnapshot
from zerogate.netops.controller_api import ControllerUnreachable
from zerogate.netops.ldap import Computer, MonitoredRead
from zerogate.segment import daemon as daemon_mod
from zerogate.segment.breakglass import load_inventory
from zerogate.segment.daemon import SegmentDaemon
from zerogate.segment.hosts import Collection, Enforcement, ScannedKey
from zerogate.segment.preflight import Preflight
from zerogate.segment.reconcile import AssetMemory, asset_report, decide, execute, remember
from zerogate.segment.ssh import HostKeyChanged

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPinnedPinnedPinnedPinnedPinned0000"
OTHER = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOtherOtherOtherOtherOtherOther0000"
T0 = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)
GOOD = Preflight(
    (PreflightItem(name="nftables", ok=True), PreflightItem(name="sshd_ports", ok=True)), (22,), ()
)


def asset(asset_id: int = 1, **fields: Any) -> SegmentAsset:
    data: dict[str, Any] = {
        "asset_id": asset_id, "name": f"host{asset_id}", "address": f"10.99.0.{asset_id + 1}",
        "ssh_port": 22, "ssh_user": "root", "host_key": KEY, "mode": "monitored",
        "rules_revision": 1, "rules": [], "jump_hosts": [],
    }  # fmt: skip
    data.update(fields)
    return SegmentAsset.model_validate(data)


def flow(peer: str, port: int = 80, count: int = 1) -> Flow:
    return Flow("tcp", port, ipaddress.ip_address(peer), "nginx", T0, T0, count)


class FakeOps:
    """Records every call; ``fail[(name, op)]`` is raised by that op on that asset."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.fail: dict[tuple[str, str], BaseException] = {}
        self.offered = KEY
        self.preflight_result = GOOD
        self.flows: list[Flow] = [flow("10.99.254.1")]
        self.outcome = "applied"
        self.block: dict[str, threading.Event] = {}
        self.lock = threading.Lock()
        self.lost = (0, 0)  # the event stream's (dropped, overflows) each collect reports
        self.retained: list[frozenset[int]] = []

    def _call(self, a: SegmentAsset, op: str) -> None:
        with self.lock:
            self.calls.append((a.name, op))
        if a.name in self.block:
            self.block[a.name].wait(10)
        if (a.name, op) in self.fail:
            raise self.fail[(a.name, op)]

    def ops(self, name: str) -> list[str]:
        return [op for n, op in self.calls if n == name]

    def scan_host_key(self, a: SegmentAsset) -> ScannedKey:
        self._call(a, "scan")
        return ScannedKey(self.offered, "SHA256:abc")

    def preflight(self, a: SegmentAsset) -> Preflight:
        self._call(a, "preflight")
        return self.preflight_result

    def start_learning(self, a: SegmentAsset) -> None:
        self._call(a, "start_learning")

    def stop_learning(self, a: SegmentAsset) -> None:
        self._call(a, "stop_learning")

    def collect(self, a: SegmentAsset, outbound: bool) -> Collection:
        self._call(a, "collect")
        return Collection(tuple(self.flows), (), (), 0, *self.lost)

    def enforce(self, a: SegmentAsset, preflight: Preflight) -> Enforcement:
        self._call(a, "enforce")
        return Enforcement(a.asset_id, a.rules_revision, self.outcome, "checked")

    def unprotect(self, a: SegmentAsset) -> None:
        self._call(a, "unprotect")

    def retain(self, asset_ids: AbstractSet[int]) -> None:
        self.retained.append(frozenset(asset_ids))


def step(
    a: SegmentAsset, m: AssetMemory | None, ops: FakeOps, now: float, every: float = 60.0
) -> AssetMemory:
    m = remember(m, a)
    return execute(a, m, decide(a, m, now, collect_every=every), ops, now)


# --------------------------------------------------------------------------- host keys


def test_an_unpinned_host_is_only_scanned_and_its_key_reported() -> None:
    ops, a = FakeOps(), asset(host_key=None, mode="protected")
    m = step(a, None, ops, 0)
    assert ops.ops("host1") == ["scan"]
    r = asset_report(a, m)
    assert (r.state, r.observed_host_key) == ("host_key_unknown", KEY)
    assert "trust host1 SHA256:abc" in r.detail
    step(a, m, ops, 1)
    assert ops.ops("host1") == ["scan"]  # not scanned again every round


def test_a_changed_host_key_stops_management_until_a_key_is_trusted_again() -> None:
    ops, a = FakeOps(), asset(mode="protected")
    ops.fail[("host1", "preflight")] = HostKeyChanged("host1: Host key verification failed")
    ops.offered = OTHER
    m = step(a, None, ops, 0)
    assert ops.ops("host1") == ["preflight", "scan"]
    assert (m.state, m.observed_host_key) == ("host_key_changed", OTHER)
    assert asset_report(a, m).observed_host_key == OTHER
    for now in (100, 1000, 5000):  # nothing touched, however long
        step(a, m, ops, now)
    assert "enforce" not in ops.ops("host1") and len(ops.calls) == 2
    # the admin trusts the new key: a new pin, a fresh start
    del ops.fail[("host1", "preflight")]
    m = step(asset(mode="protected", host_key=OTHER), m, ops, 6000)
    assert ops.ops("host1")[2:] == ["preflight", "stop_learning", "enforce"]
    assert (m.state, m.enforced_revision) == ("enforced", 1)


# --------------------------------------------------------------------------- modes


def test_a_monitored_host_gets_a_preflight_and_no_learning_or_enforcement_once() -> None:
    ops, a = FakeOps(), asset()
    m = step(a, None, ops, 0)
    assert ops.ops("host1") == ["preflight", "stop_learning", "unprotect"]
    r = asset_report(a, m)
    assert (r.state, r.ssh_ports, [p.name for p in r.preflight]) == (
        "ready",
        (22,),
        ["nftables", "sshd_ports"],
    )
    step(a, m, ops, 30)
    assert len(ops.calls) == 3  # nothing more to do until the next preflight


def test_learning_starts_once_and_collects_every_interval() -> None:
    ops, a = FakeOps(), asset(mode="learning")
    m = step(a, None, ops, 0, every=1.0)
    assert ops.ops("host1") == ["preflight", "unprotect", "start_learning", "collect"]
    assert m.state == "learning" and len(m.flows) == 1
    step(a, m, ops, 0.5, every=1.0)
    assert ops.ops("host1").count("collect") == 1  # not yet due
    ops.flows = [flow("10.99.254.1"), flow("10.99.254.2", 5432)]
    step(a, m, ops, 1.2, every=1.0)
    assert ops.ops("host1").count("collect") == 2 and ops.ops("host1").count("start_learning") == 1
    assert {(str(f.peer), f.count) for f in m.flows} == {("10.99.254.1", 2), ("10.99.254.2", 1)}


def test_the_event_streams_losses_are_reported() -> None:
    ops, a = FakeOps(), asset(mode="learning")
    m = step(a, None, ops, 0)
    r = asset_report(a, m)
    assert (r.events_dropped, r.event_overflows) == (0, 0)
    ops.lost = (12, 2)
    m = step(a, m, ops, 61)
    r = asset_report(a, m)
    assert (r.events_dropped, r.event_overflows) == (12, 2) and r.state == "learning"


def test_an_enforcing_mode_enforces_each_revision_once_after_a_fresh_preflight() -> None:
    ops, a = FakeOps(), asset(mode="protected", rules_revision=4)
    m = step(a, None, ops, 0)
    assert ops.ops("host1") == ["preflight", "stop_learning", "enforce"]
    assert (m.state, m.enforced_revision, asset_report(a, m).enforced_revision) == ("enforced", 4, 4)
    step(a, m, ops, 10)
    assert ops.ops("host1").count("enforce") == 1
    m = step(asset(mode="protected", rules_revision=5), m, ops, 20)
    assert ops.ops("host1")[3:] == ["preflight", "enforce"]
    assert m.enforced_revision == 5
    # back to monitored: the table goes
    m = step(asset(mode="monitored", rules_revision=6), m, ops, 30)
    assert ops.ops("host1")[-1] == "unprotect" and (m.state, m.enforced_revision) == ("ready", None)


def test_learning_with_blocks_learns_and_enforces() -> None:
    ops, a = FakeOps(), asset(mode="learning_with_blocks")
    m = step(a, None, ops, 0)
    assert ops.ops("host1") == ["preflight", "enforce", "start_learning", "collect"]
    assert m.state == "enforced"


def test_a_rolled_back_revision_is_reported_and_not_tried_again() -> None:
    ops, a = FakeOps(), asset(mode="protected")
    ops.fail[("host1", "enforce")] = CheckFailedRolledBack("host1: port 22 did not answer; rolled back")
    m = step(a, None, ops, 0)
    assert (m.state, m.enforced_revision) == ("rolled_back", None)
    assert "port 22 did not answer" in asset_report(a, m).detail
    for now in (100, 1000):
        step(a, m, ops, now)
    assert ops.ops("host1").count("enforce") == 1 and m.state == "rolled_back"
    del ops.fail[("host1", "enforce")]
    step(asset(mode="protected", rules_revision=2), m, ops, 2000)  # a new revision is tried
    assert ops.ops("host1").count("enforce") == 2 and m.state == "enforced"


def test_an_unreachable_host_is_tried_again_after_a_pause() -> None:
    ops, a = FakeOps(), asset(mode="protected")
    ops.fail[("host1", "preflight")] = TargetUnreachable("host1: connection timed out")
    m = step(a, None, ops, 0)
    assert m.state == "unreachable" and "timed out" in m.detail
    step(a, m, ops, 5)
    assert len(ops.calls) == 1  # left alone for a while
    del ops.fail[("host1", "preflight")]
    step(a, m, ops, 31)
    assert m.state == "enforced"


def test_a_failing_preflight_holds_enforcement_back() -> None:
    ops, a = FakeOps(), asset(mode="protected")
    ops.preflight_result = Preflight(
        (PreflightItem(name="nftables", ok=False, detail="nft: not found"),), (22,), ()
    )
    m = step(a, None, ops, 0)
    assert m.state == "failed" and "nft: not found" in m.detail and "enforce" not in ops.ops("host1")
    step(a, m, ops, 100)
    assert "enforce" not in ops.ops("host1")
    ops.preflight_result = GOOD
    step(a, m, ops, 700)  # the next preflight passes
    assert ops.ops("host1")[-1] == "enforce" and m.state == "enforced"


# --------------------------------------------------------------------------- the daemon


def identity(tmp: Path) -> DeviceIdentity:
    return DeviceIdentity(tmp, "segment", "seg", 7, "https://127.0.0.1:1", b"", "x", "")


def snapshot(*assets: SegmentAsset, revision: int = 1) -> SegmentSnapshot:
    return SegmentSnapshot(revision=revision, device_id=7, name="seg", assets=assets)


def wait_for(cond: Any, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not met in time"
        time.sleep(0.01)


def test_a_blocked_host_does_not_hold_the_others_up_and_the_inventory_is_saved(tmp_path: Path) -> None:
    ops = FakeOps()
    ops.block["host1"] = threading.Event()
    d = SegmentDaemon(identity(tmp_path), ops, max_ssh=4)
    d.apply(snapshot(asset(1, mode="protected"), asset(2, mode="protected"), asset(3)))
    assert [a.name for a in load_inventory(tmp_path / daemon_mod.INVENTORY)] == ["host1", "host2", "host3"]
    assert ops.retained == [frozenset({1, 2, 3})]  # background work of assets gone is stopped
    with ThreadPoolExecutor(4) as pool:
        d.round(pool)
        wait_for(lambda: d.memory[2].state == "enforced" and d.memory[3].state == "ready")
        assert d.round(pool) == 0  # host1 still in flight: not submitted twice
        assert ops.ops("host1") == ["preflight"]
        ops.block["host1"].set()
        wait_for(lambda: d.memory[1].state == "enforced")


def test_reports_carry_the_flows_once_delivered_and_keep_them_otherwise(tmp_path: Path) -> None:
    sent: list[dict[str, Any]] = []
    down = [True]

    def post(body: dict[str, object]) -> None:
        if down[0]:
            raise ControllerUnreachable("https://127.0.0.1:1", "controller down")
        sent.append(dict(body))

    ops = FakeOps()
    d = SegmentDaemon(identity(tmp_path), ops, post=post)
    d.apply(snapshot(asset(1, mode="learning")))
    with ThreadPoolExecutor(2) as pool:
        d.round(pool)
        wait_for(lambda: d.memory[1].state == "learning" and not d.in_flight)
    assert not d.send_reports(post)
    assert len(d.memory[1].flows) == 1  # kept for the next report
    down[0] = False
    assert d.send_reports(post)
    report = SegmentReport.model_validate(sent[0])
    (r,) = report.assets
    assert (r.state, [str(f.peer) for f in r.flows], report.directory) == ("learning", ["10.99.254.1"], None)
    assert d.memory[1].flows == ()
    assert d.send_reports(post) and SegmentReport.model_validate(sent[1]).assets[0].flows == ()


def test_large_reports_are_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(daemon_mod, "MAX_FLOWS_PER_REPORT", 3)
    d = SegmentDaemon(identity(tmp_path), FakeOps())
    d.apply(snapshot(*(asset(i, mode="learning") for i in range(1, 5))))
    for i in range(1, 5):
        d.memory[i] = AssetMemory(pinned=KEY, flows=(flow("10.0.0.1"), flow("10.0.0.2")), state="learning")
    reports = d.reports()
    assert [len(r.assets) for r, _ in reports] == [1, 1, 1, 1]
    assert all(len(a.flows) == 2 for r, _ in reports for a in r.assets)


class FakeDirectory:
    def __init__(self) -> None:
        self.monitored = (Computer("cn=host1,ou=computers,dc=example,dc=org", "host1"),)
        self.protected: set[str] = set()
        self.searched: list[str] = []

    def read_monitored(self) -> MonitoredRead:
        return MonitoredRead(self.monitored, len(self.monitored))

    def protected_members(self) -> tuple[str, ...]:
        return tuple(sorted(self.protected))

    def find_computers(self, name: str) -> tuple[Computer, ...]:
        self.searched.append(name)
        return (Computer(f"cn={name},ou=other,dc=example,dc=org", name),) if name == "host2" else ()

    def add_protected(self, dn: str) -> bool:
        self.protected.add(dn)
        return True

    def remove_protected(self, dn: str) -> bool:
        self.protected.discard(dn)
        return True


def test_the_directory_members_are_reported_and_protected_assets_join_the_group(tmp_path: Path) -> None:
    ops, ldap = FakeOps(), FakeDirectory()
    d = SegmentDaemon(identity(tmp_path), ops, directory=ldap)
    d.apply(snapshot(asset(1, mode="protected"), asset(2, mode="protected"), asset(3, mode="protected")))
    with ThreadPoolExecutor(2) as pool:
        d.round(pool)
        wait_for(lambda: all(m.state == "enforced" for m in d.memory.values()) and not d.in_flight)
    d.sync_directory()
    # host1 by the monitored group, host2 by a search, host3 has no computer entry (a static asset)
    assert ldap.protected == {
        "cn=host1,ou=computers,dc=example,dc=org",
        "cn=host2,ou=other,dc=example,dc=org",
    }
    (report, _), *_ = d.reports()
    assert report.directory is not None and [c.name for c in report.directory] == ["host1"]
    d.apply(snapshot(asset(1, mode="monitored", rules_revision=2), asset(2, mode="protected"), revision=2))
    with ThreadPoolExecutor(2) as pool:
        d.round(pool)
        wait_for(lambda: d.memory[1].state == "ready" and not d.in_flight)
    d.sync_directory()
    assert ldap.protected == {"cn=host2,ou=other,dc=example,dc=org"}
