"""The segment server with Linux and Windows assets in one snapshot: the router sends each
asset to its backend. No Windows host can run here, so the WinRM side is pypsrp's client
mocked (the scripts are answered by title, the service checks are real loopback TCP); the
Linux side is a fake SSH backend (the real one has its own end-to-end tests).

Also: a Windows asset with no WinRM password, a port the transport does not use, or the
http transport says so in its state while the Linux assets go on; break-glass reaches
Windows assets through WinRM.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import threading
from collections.abc import Callable, Iterator
from collections.abc import Set as AbstractSet
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from zerogate.agent.settings import SegmentSettings
from zerogate.agent.state import DeviceIdentity
from zerogate.model.segment_report import PreflightItem, SegmentReport
from zerogate.model.snapshot import SegmentAsset, SegmentSnapshot
from zerogate.segment.breakglass import WindowsBreakGlass, break_glass
from zerogate.segment.daemon import SegmentDaemon
from zerogate.segment.hosts import Collection, Enforcement, ScannedKey
from zerogate.segment.preflight import Preflight
from zerogate.segment.reconcile import AssetMemory, decide, execute
from zerogate.segment.router import HostOpsRouter, windows_ops
from zerogate.segment.windows.winrm import WinRmAccess, WinRmHostOps, pin_of
from zerogate.testbed.lab import wait_for

SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPinnedPinnedPinnedPinnedPinned0000"
PIN = pin_of(b"the listener certificate").key
LOOPBACK = ipaddress.ip_address("127.0.0.1")
PASSWORD = "W1n-s3cret"
Answer = Callable[[], tuple[str, Any, bool]]


def result(**fields: Any) -> Answer:
    return lambda: (json.dumps({"v": 1, **fields}), None, False)


@dataclass
class MockPsrpClient:
    """Stands for ``pypsrp.client.Client``: answers each script by its title line."""

    account: str
    password: str
    answers: dict[str, Answer]
    ran: list[str] = field(default_factory=list)

    def execute_ps(self, script: str) -> tuple[str, Any, bool]:
        title = script.splitlines()[0].removeprefix("# zerogate segment: ")
        self.ran.append(title)
        for prefix, answer in self.answers.items():
            if title.startswith(prefix):
                return answer()
        raise AssertionError(f"unexpected script {title}")

    def close(self) -> None:
        pass


@dataclass
class MockPsrp:
    answers: dict[str, Answer]
    clients: list[MockPsrpClient] = field(default_factory=list)

    def __call__(self, asset: SegmentAsset, access: WinRmAccess) -> MockPsrpClient:
        client = MockPsrpClient(access.username, access.password, self.answers)
        self.clients.append(client)
        return client


class FakeSshOps:
    """The Linux backend: records which asset each call was for."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.retained: list[frozenset[int]] = []

    def _call(self, a: SegmentAsset, op: str) -> None:
        with self.lock:
            self.calls.append((a.name, op))

    def scan_host_key(self, a: SegmentAsset) -> ScannedKey:
        self._call(a, "scan")
        return ScannedKey(SSH_KEY, "SHA256:abc")

    def preflight(self, a: SegmentAsset) -> Preflight:
        self._call(a, "preflight")
        return Preflight((PreflightItem(name="nftables", ok=True),), (22,), ())

    def start_learning(self, a: SegmentAsset) -> None:
        self._call(a, "start_learning")

    def stop_learning(self, a: SegmentAsset) -> None:
        self._call(a, "stop_learning")

    def collect(self, a: SegmentAsset, outbound: bool) -> Collection:
        self._call(a, "collect")
        return Collection((), (), ())

    def enforce(self, a: SegmentAsset, preflight: Preflight) -> Enforcement:
        self._call(a, "enforce")
        return Enforcement(a.asset_id, a.rules_revision, "applied", "checked")

    def unprotect(self, a: SegmentAsset) -> None:
        self._call(a, "unprotect")

    def retain(self, asset_ids: AbstractSet[int]) -> None:
        self.retained.append(frozenset(asset_ids))


@pytest.fixture
def service() -> Iterator[int]:
    """A real loopback TCP service the enforcement check probes."""
    s = socket.create_server(("127.0.0.1", 0))
    try:
        yield s.getsockname()[1]
    finally:
        s.close()


def settings(tmp_path: Path, **fields: Any) -> SegmentSettings:
    secret = tmp_path / "winrm.pw"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o600)
    return SegmentSettings.model_validate({"winrm_password_file": str(secret), **fields})


def linux(asset_id: int = 1, **fields: Any) -> SegmentAsset:
    return SegmentAsset.model_validate({
        "asset_id": asset_id, "name": f"lin{asset_id}", "address": "10.99.0.2", "ssh_port": 22,
        "ssh_user": "root", "host_key": SSH_KEY, "mode": "protected", "rules_revision": 3, "rules": [],
        "jump_hosts": [], **fields,
    })  # fmt: skip


def windows(port: int, asset_id: int = 2, **fields: Any) -> SegmentAsset:
    return SegmentAsset.model_validate({
        "asset_id": asset_id, "name": f"win{asset_id}", "address": "127.0.0.1", "ssh_port": 5986,
        "ssh_user": "CORP\\zgsvc", "host_key": PIN, "mode": "protected", "rules_revision": 12,
        "rules": [{"rule_id": 1, "action": "accept", "protocol": "tcp", "port_first": port,
                   "port_last": port, "sources": ["127.0.0.0/8"]}],
        "jump_hosts": [], "os": "windows", **fields,
    })  # fmt: skip


def windows_host(port: int) -> dict[str, Answer]:
    return {
        "preflight": result(
            service="Running", profiles=[{"name": "Domain", "enabled": "True", "inbound": "Block"}],
            ours=0, other_allow=0, other_block=0, winrm=[{"transport": "HTTPS", "port": 5986}],
            listen=[{"p": "tcp", "a": "0.0.0.0", "port": port, "proc": "svc"}]),
        "unprotect": result(unprotected=True, removed=0, defaults_restored=False),
        "asset win2, mode protected, revision 12": result(applied=12, rules=2, rollback_at="x"),
        "confirm revision 12": result(confirm="confirmed", revision=12),
        "break-glass": result(unprotected=True, failed=[]),
    }  # fmt: skip


def router(tmp_path: Path, psrp: MockPsrp, ssh: FakeSshOps, **fields: Any) -> HostOpsRouter:
    made, why_not = windows_ops(settings(tmp_path, **fields), lambda a: [LOOPBACK], factory=psrp)
    assert made is not None, why_not
    return HostOpsRouter(ssh, made)


def run_once(asset: SegmentAsset, ops: HostOpsRouter) -> AssetMemory:
    memory = AssetMemory(pinned=asset.host_key)
    return execute(asset, memory, decide(asset, memory, 0.0, collect_every=60.0), ops, 0.0)


def test_router_mock_winrm_enforces_windows_while_linux_goes_to_ssh(tmp_path: Path, service: int) -> None:
    psrp, ssh = MockPsrp(windows_host(service)), FakeSshOps()
    sent: list[dict[str, object]] = []
    identity = DeviceIdentity(tmp_path, "segment", "seg", 7, "https://127.0.0.1:1", b"", "x", "")
    daemon = SegmentDaemon(identity, router(tmp_path, psrp, ssh), post=sent.append)
    daemon.apply(SegmentSnapshot(revision=1, device_id=7, name="seg", assets=(linux(), windows(service))))
    assert ssh.retained == [frozenset({1, 2})]
    assert set(daemon.jit.assets) == {1}  # just-in-time openings are nft elements: Linux only
    with ThreadPoolExecutor(2) as pool:
        daemon.round(pool)
        wait_for(
            lambda: all(daemon.memory[i].state == "enforced" for i in (1, 2)) and not daemon.in_flight,
            10,
            "both assets enforced",
        )
    assert {name for name, _ in ssh.calls} == {"lin1"} and ("lin1", "enforce") in ssh.calls
    assert [c.ran[0] for c in psrp.clients] == [
        "preflight",
        "asset win2, mode protected, revision 12",
        "confirm revision 12",
    ]
    # each session logs in as the asset's own account with the server's password (from its file)
    assert {(c.account, c.password) for c in psrp.clients} == {("CORP\\zgsvc", PASSWORD)}
    assert daemon.send_reports(sent.append)
    report = SegmentReport.model_validate(sent[-1])
    assert {(a.asset_id, a.state, a.enforced_revision) for a in report.assets} == {
        (1, "enforced", 3),
        (2, "enforced", 12),
    }


def test_a_windows_asset_without_winrm_password_says_so_and_linux_goes_on(tmp_path: Path) -> None:
    made, why_not = windows_ops(SegmentSettings(), lambda a: [LOOPBACK])
    assert made is None
    ssh = FakeSshOps()
    ops = HostOpsRouter(ssh, made, why_not)
    memory = run_once(windows(80), ops)
    assert memory.state == "failed" and "winrm_password_file" in memory.detail
    assert run_once(linux(), ops).state == "enforced"
    assert {name for name, _ in ssh.calls} == {"lin1"}
    ops.retain({1, 2})
    assert ssh.retained == [frozenset({1, 2})]


def test_windows_port_and_transport_mismatches_are_explained_mock_winrm(tmp_path: Path) -> None:
    psrp, ssh = MockPsrp(windows_host(80)), FakeSshOps()
    memory = run_once(windows(80, ssh_port=5985), router(tmp_path, psrp, ssh))
    assert memory.state == "failed" and "--port 5986" in memory.detail and psrp.clients == []
    # over http there is no certificate: nothing to pin, so the asset cannot be onboarded
    over_http = router(tmp_path, psrp, ssh, winrm_transport="http")
    memory = run_once(windows(80, ssh_port=5985, host_key=None), over_http)
    assert memory.state == "failed" and 'winrm_transport = "https"' in memory.detail


def test_a_windows_asset_is_onboarded_by_its_certificate_mock_winrm(tmp_path: Path) -> None:
    ops = router(tmp_path, MockPsrp({}), FakeSshOps())
    assert ops.windows is not None
    scanned: list[tuple[str, int]] = []

    def scan(address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> ScannedKey:
        scanned.append((str(address), port))
        return pin_of(b"the listener certificate")

    ops.windows.scan = scan
    memory = run_once(windows(80, host_key=None), ops)
    assert scanned == [("127.0.0.1", 5986)]
    assert (memory.state, memory.observed_host_key) == ("host_key_unknown", PIN)
    fingerprint = pin_of(b"the listener certificate").fingerprint
    assert f"trust win2 {fingerprint}" in memory.detail and "certificate" in memory.detail
    assert "ssh-keygen" not in memory.detail


def test_break_glass_reaches_windows_assets_over_winrm_mock_winrm(tmp_path: Path) -> None:
    psrp = MockPsrp(windows_host(80) | {"break-glass": result(unprotected=False, failed=["defaults"])})
    made, _ = windows_ops(settings(tmp_path), lambda a: [], factory=psrp)
    assert isinstance(made, WinRmHostOps)
    access: Any = None  # no Linux asset here: the SSH login is never used
    assets = [windows(80, asset_id=2), windows(80, asset_id=3)]
    got = break_glass(assets, access, windows=WindowsBreakGlass(made))
    assert [(r.name, r.ok) for r in got] == [("win2", False), ("win3", False)]
    assert "defaults" in got[0].detail
    assert [c.ran for c in psrp.clients] == [["break-glass"], ["break-glass"]]
    none = break_glass(assets[:1], access, windows=WindowsBreakGlass(None, "no winrm_password_file set"))
    assert (none[0].ok, none[0].detail) == (False, "Windows asset, but no winrm_password_file set")
