"""``WinRmHostOps`` against a mock of pypsrp's client (no Windows host can run here):
the right scripts in the right order, a fresh session for the confirm, errors mapped
to the segment module's typed errors, and the reconcile loop driving it.

The service checks are real TCP connects to loopback listeners, and the
certificate pinning is exercised for real against a loopback TLS server.
"""

from __future__ import annotations

import http.server
import ipaddress
import json
import re
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from pypsrp.exceptions import AuthenticationError, WinRMTransportError

from zerogate.deploy.firewall.errors import (
    BackendError,
    CheckFailedRolledBack,
    RollbackLeftToTarget,
    TargetUnreachable,
)
from zerogate.model.snapshot import SegmentAsset
from zerogate.netops.command import run
from zerogate.segment.hosts import SegmentHostError
from zerogate.segment.reconcile import AssetMemory, decide, execute
from zerogate.segment.ssh import HostKeyChanged
from zerogate.segment.windows import winrm
from zerogate.segment.windows.parse import WindowsPreflight
from zerogate.segment.windows.winrm import PinnedAdapter, WinRmAccess, WinRmHostOps

PIN = "x509-sha256 " + "A" * 43 + "="
LOOPBACK = ipaddress.ip_address("127.0.0.1")


def result(**fields: Any) -> str:
    return json.dumps({"v": 1, **fields})


@dataclass
class FakeClient:
    """Answers each script by its title line; records what ran. ``fail`` raises instead."""

    number: int
    answers: dict[str, Callable[[], tuple[str, Any, bool]]]
    ran: list[str] = field(default_factory=list)
    closed: bool = False

    def execute_ps(self, script: str) -> tuple[str, Any, bool]:
        title = script.splitlines()[0].removeprefix("# zerogate segment: ")
        self.ran.append(title)
        for prefix, answer in self.answers.items():
            if title.startswith(prefix):
                return answer()
        raise AssertionError(f"unexpected script {title}")

    def close(self) -> None:
        self.closed = True


@dataclass
class FakeWinRm:
    answers: dict[str, Callable[[], tuple[str, Any, bool]]]
    clients: list[FakeClient] = field(default_factory=list)

    def __call__(self, asset: SegmentAsset, access: WinRmAccess) -> FakeClient:
        client = FakeClient(len(self.clients) + 1, self.answers)
        self.clients.append(client)
        return client

    @property
    def sessions(self) -> list[list[str]]:
        return [c.ran for c in self.clients]


def ok(text: str) -> Callable[[], tuple[str, Any, bool]]:
    return lambda: (text, None, False)


def raises(exc: BaseException) -> Callable[[], tuple[str, Any, bool]]:
    def answer() -> tuple[str, Any, bool]:
        raise exc

    return answer


@pytest.fixture
def service() -> Iterator[socket.socket]:
    """A real loopback TCP service the check probes; closing it is "the rules cut it off"."""
    s = socket.create_server(("127.0.0.1", 0))
    try:
        yield s
    finally:
        s.close()


def windows_asset(port: int, mode: str = "protected", revision: int = 12) -> SegmentAsset:
    asset = SegmentAsset.model_validate({
        "asset_id": 4, "name": "win1", "address": "127.0.0.1", "ssh_port": 5986, "ssh_user": "zgsvc",
        "host_key": None, "mode": mode, "rules_revision": revision, "jump_hosts": [],
        "rules": [{"rule_id": 1, "action": "accept", "protocol": "tcp", "port_first": port,
                   "port_last": port, "sources": ["127.0.0.0/8"]}],
    })  # fmt: skip
    return asset.model_copy(update={"host_key": PIN})  # the model's HostKeyText takes SSH keys only


def preflight_out(port: int) -> str:
    return result(
        service="Running", profiles=[{"name": "Domain", "enabled": "True", "inbound": "Block"}],
        ours=0, other_allow=0, other_block=0, winrm=[{"transport": "HTTPS", "port": 5986}],
        listen=[{"p": "tcp", "a": "0.0.0.0", "port": port, "proc": "svc"},
                {"p": "tcp", "a": "0.0.0.0", "port": 5986, "proc": "System"}],
    )  # fmt: skip


def ops(fake: FakeWinRm, **kwargs: Any) -> WinRmHostOps:
    access = WinRmAccess("zgsvc@EXAMPLE.TEST", "secret", confirm_after=60)
    return WinRmHostOps(
        access, servers=lambda a: [LOOPBACK], session_factory=fake, check_timeout=2.0, **kwargs
    )


def preflight_of(fake: FakeWinRm, host: WinRmHostOps, asset: SegmentAsset) -> WindowsPreflight:
    pf = host.preflight(asset)
    assert isinstance(pf, WindowsPreflight)
    fake.clients.clear()
    return pf


def test_enforce_mock_winrm_applies_then_confirms_over_a_fresh_session(service: socket.socket) -> None:
    port = service.getsockname()[1]
    fake = FakeWinRm({
        "preflight": ok(preflight_out(port)),
        "asset win1, mode protected, revision 12": ok(result(applied=12, rules=2, rollback_at="x")),
        "confirm revision 12": ok(result(confirm="confirmed", revision=12)),
    })  # fmt: skip
    host = ops(fake)
    asset = windows_asset(port)
    done = host.enforce(asset, preflight_of(fake, host, asset))
    assert fake.sessions == [["asset win1, mode protected, revision 12"], ["confirm revision 12"]]
    assert all(c.closed for c in fake.clients)
    assert done.outcome == "applied" and f"services answering: {port}" in done.detail


def test_enforce_mock_winrm_rolls_back_at_once_when_a_service_stops_answering(service: socket.socket) -> None:
    port = service.getsockname()[1]

    def apply_cuts_service() -> tuple[str, Any, bool]:
        service.close()
        return result(applied=12, rules=2, rollback_at="x"), None, False

    fake = FakeWinRm({
        "preflight": ok(preflight_out(port)),
        "asset win1": apply_cuts_service,
        "roll back now": ok(result(rolled_back=True)),
    })  # fmt: skip
    host = ops(fake)
    asset = windows_asset(port)
    with pytest.raises(CheckFailedRolledBack, match=f"TCP {port} stopped answering"):
        host.enforce(asset, preflight_of(fake, host, asset))
    assert fake.sessions == [["asset win1, mode protected, revision 12"], ["roll back now"]]


@pytest.mark.parametrize(
    "failure",
    [requests.exceptions.ConnectionError("refused"), requests.exceptions.ReadTimeout("slow"),
     WinRMTransportError("http", 500, "boom")],
)  # fmt: skip
def test_enforce_mock_winrm_without_a_fresh_session_leaves_the_rollback_to_the_host(
    service: socket.socket, failure: Exception
) -> None:
    port = service.getsockname()[1]
    fake = FakeWinRm({
        "preflight": ok(preflight_out(port)),
        "asset win1": ok(result(applied=12, rules=2, rollback_at="x")),
        "confirm": raises(failure),
    })  # fmt: skip
    host = ops(fake)
    asset = windows_asset(port)
    with pytest.raises(RollbackLeftToTarget, match="restores its previous policy within 60 s"):
        host.enforce(asset, preflight_of(fake, host, asset))
    assert len(fake.clients) == 2 and fake.clients[1].closed


def test_enforce_mock_winrm_confirm_too_late_is_rolled_back(service: socket.socket) -> None:
    port = service.getsockname()[1]
    fake = FakeWinRm({
        "preflight": ok(preflight_out(port)),
        "asset win1": ok(result(applied=12, rules=2, rollback_at="x")),
        "confirm": ok(result(confirm="ran", revision=12)),
    })  # fmt: skip
    host = ops(fake)
    asset = windows_asset(port)
    with pytest.raises(CheckFailedRolledBack, match="after the deadline"):
        host.enforce(asset, preflight_of(fake, host, asset))


def test_enforce_mock_winrm_failed_apply_script_is_a_backend_error_without_confirm(
    service: socket.socket,
) -> None:
    port = service.getsockname()[1]
    fake = FakeWinRm({
        "preflight": ok(preflight_out(port)),
        "asset win1": lambda: ("", type("S", (), {"error": ["Access is denied.\x1b[0m\nline2"]})(), True),
    })  # fmt: skip
    host = ops(fake)
    asset = windows_asset(port)
    with pytest.raises(BackendError, match=re.escape("failed on the host: Access is denied. [0m line2")):
        host.enforce(asset, preflight_of(fake, host, asset))
    assert len(fake.clients) == 1


def test_enforce_mock_winrm_unreachable_while_applying_leaves_rollback_to_host(
    service: socket.socket,
) -> None:
    port = service.getsockname()[1]
    fake = FakeWinRm({"preflight": ok(preflight_out(port)),
                      "asset win1": raises(requests.exceptions.ConnectionError("reset"))})  # fmt: skip
    host = ops(fake)
    asset = windows_asset(port)
    with pytest.raises(RollbackLeftToTarget):
        host.enforce(asset, preflight_of(fake, host, asset))


@pytest.mark.parametrize(
    ("failure", "error"),
    [
        (AuthenticationError("Failed to authenticate"), SegmentHostError),
        (requests.exceptions.SSLError("Fingerprints did not match. Expected x, got y"), HostKeyChanged),
        (requests.exceptions.SSLError("handshake failure"), TargetUnreachable),
        (requests.exceptions.ConnectionError("refused"), TargetUnreachable),
        (WinRMTransportError("http", 503, "busy"), TargetUnreachable),
    ],
)
def test_errors_mock_winrm_map_to_segment_errors(failure: Exception, error: type[Exception]) -> None:
    fake = FakeWinRm({"preflight": raises(failure)})
    with pytest.raises(error) as info:
        ops(fake).preflight(windows_asset(80))
    assert "secret" not in str(info.value)
    assert fake.clients[0].closed


def test_collect_and_unprotect_mock_winrm_run_their_scripts() -> None:
    fake = FakeWinRm({
        "learning snapshot": ok(result(
            listen=[{"p": "tcp", "a": "0.0.0.0", "port": 3389, "proc": "svchost"}],
            est=[{"la": "10.0.0.2", "lp": 3389, "ra": "10.0.0.9", "rp": 50000, "proc": "svchost"}],
            addr=["10.0.0.2"])),
        "unprotect": ok(result(unprotected=True, removed=3, defaults_restored=True)),
        "break-glass": ok(result(unprotected=False, failed=["defaults"])),
    })  # fmt: skip
    host = ops(fake)
    got = host.collect(windows_asset(80), outbound=False)
    assert [(f.port, str(f.peer), f.process) for f in got.flows] == [(3389, "10.0.0.9", "svchost")]
    host.unprotect(windows_asset(80))
    assert host.break_glass(windows_asset(80)) == ("defaults",)
    assert fake.sessions == [["learning snapshot"], ["unprotect"], ["break-glass"]]


def test_reconcile_mock_winrm_drives_a_windows_asset_to_enforced(service: socket.socket) -> None:
    port = service.getsockname()[1]
    fake = FakeWinRm({
        "preflight": ok(preflight_out(port)),
        "unprotect": ok(result(unprotected=True, removed=0, defaults_restored=False)),
        "asset win1": ok(result(applied=12, rules=2, rollback_at="x")),
        "confirm": ok(result(confirm="confirmed", revision=12)),
    })  # fmt: skip
    asset = windows_asset(port)
    memory = AssetMemory(pinned=asset.host_key)
    steps = decide(asset, memory, 0.0, collect_every=60.0)
    execute(asset, memory, steps, ops(fake), 0.0)
    assert (memory.state, memory.enforced_revision) == ("enforced", 12), memory.detail
    assert [c.ran[0] for c in fake.clients] == ["preflight", "asset win1, mode protected, revision 12",
                                                "confirm revision 12"]  # fmt: skip


@pytest.mark.parametrize(
    "fields",
    [{"auth": "basic"}, {"auth": "credssp"}, {"transport": "http", "auth": "ntlm"}, {"username": "a\nb"},
     {"confirm_after": 5}],
)  # fmt: skip
def test_access_refuses_weak_or_bad_settings(fields: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        WinRmAccess(**{"username": "zgsvc", "password": "secret", **fields})
    assert "secret" not in repr(WinRmAccess("zgsvc", "secret"))


def test_pypsrp_session_is_pinned_and_encrypted_mock_winrm() -> None:
    """A real pypsrp client (no connection made): the pinned adapter is in place. Fails
    when pypsrp's transport internals this relies on change."""
    client = winrm.pypsrp_session(windows_asset(80), WinRmAccess("zgsvc", "secret"))
    session = client.wsman.transport.session  # type: ignore[attr-defined]
    adapter = session.adapters["https://"]
    assert isinstance(adapter, PinnedAdapter) and adapter.fingerprint_hex == "00" * 32
    assert client.wsman.transport.auth == "kerberos"  # type: ignore[attr-defined]
    http = winrm.pypsrp_session(windows_asset(80), WinRmAccess("zgsvc", "secret", transport="http"))
    assert http.wsman.transport.wrap_required  # type: ignore[attr-defined]  # message encryption


# --------------------------------------------------------------------------- real TLS pinning


class NoContent(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A loopback HTTPS server with a fresh self-signed certificate (like a WinRM listener's)."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=win1"], timeout=30)  # fmt: skip
    server = http.server.HTTPServer(("127.0.0.1", 0), NoContent)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], cert
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_scanned_certificate_pin_admits_it_and_refuses_another(tls_server: tuple[int, Path]) -> None:
    port, cert = tls_server
    scanned = winrm.scan_certificate(LOOPBACK, port)
    printed = run(["openssl", "x509", "-in", str(cert), "-noout", "-fingerprint", "-sha256"]).stdout
    assert scanned.key == winrm.pin_of(ssl.PEM_cert_to_DER_cert(cert.read_text())).key
    assert bytes.fromhex(printed.split("=", 1)[1].strip().replace(":", "")).hex() == winrm._pin_hex(
        scanned.key
    )
    pinned = requests.Session()
    winrm.pin_session(pinned, scanned.key)
    assert pinned.get(f"https://127.0.0.1:{port}/", timeout=5).status_code == 204
    other = requests.Session()
    winrm.pin_session(other, PIN)
    with pytest.raises(requests.exceptions.SSLError, match=r"(?i)fingerprint"):
        other.get(f"https://127.0.0.1:{port}/", timeout=5)
