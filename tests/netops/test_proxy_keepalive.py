"""Status reports through an HTTP CONNECT proxy keep one connection (issue 9):
a device reporting every REPORT_INTERVAL seconds must not open a new CONNECT
tunnel and TLS handshake per report. A private squid on 127.0.0.1 counts the
tunnels; a private controller receives the reports from the real report_loop.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from zerogate.agent import reporting
from zerogate.agent.reporting import report_loop
from zerogate.agent.state import DeviceIdentity
from zerogate.cli.device import enroll_device
from zerogate.testbed.lab import wait_for
from zerogate.testbed.localrun import AccountSession, LocalController
from zerogate.testbed.proxy import ProxyError, Squid, squid_binary

pytestmark = [pytest.mark.slow]

REPORTS = 3
_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalController, AccountSession]]:
    lc = LocalController(tmp_path_factory.mktemp("proxied") / "data").init()
    try:
        lc.start()
        yield lc, lc.bootstrap_admin()
    finally:
        lc.stop()


@pytest.fixture
def squid(deployment: tuple[LocalController, AccountSession]) -> Iterator[Squid]:
    if squid_binary() is None:
        pytest.skip("squid is not installed: run scripts/bootstrap (it installs the Debian package)")
    # Not tmp_path: squid drops to the 'proxy' user, which cannot enter pytest's 0700 directories.
    with tempfile.TemporaryDirectory(prefix="zg-squid-") as base:
        proxy = Squid(Path(base), (deployment[0].port,))
        try:
            proxy.start()
        except ProxyError as exc:
            pytest.skip(f"squid cannot run on this machine: {exc}")
        try:
            yield proxy
        finally:
            proxy.stop()


def test_reports_through_a_proxy_share_one_connect_tunnel(
    deployment: tuple[LocalController, AccountSession],
    squid: Squid,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    controller, admin = deployment
    admin.client.post("/v1/gateways", {"name": "proxied", "public_endpoint": "gw.example.test"})
    created = admin.client.post("/v1/gateways/proxied/provisioning-keys", {})
    for name in _PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    enroll_device("gateway", created["install_string"], "proxied", tmp_path / "gw", force=False)
    identity = DeviceIdentity.load(tmp_path / "gw", "gateway")
    monkeypatch.setenv("HTTPS_PROXY", squid.url)

    built: list[int] = []

    def build() -> dict[str, Any]:
        built.append(len(built) + 1)
        return {"version": "test", "interface": "zg-test", "details": {"revision": built[-1]}}

    def delivered() -> int:
        gw = next(
            d for d in admin.client.get("/v1/devices", {"role": "gateway"}) if d["id"] == identity.device_id
        )
        return int((gw["report"] or {}).get("details", {}).get("revision") or 0)

    stop = threading.Event()
    loop = threading.Thread(target=report_loop, args=(identity, build, stop), daemon=True)
    loop.start()
    try:
        bound = REPORTS * reporting.REPORT_INTERVAL + 15
        wait_for(
            lambda: delivered() >= REPORTS, bound, f"{REPORTS} reports through squid:\n{squid.log_tail()}"
        )
    finally:
        stop.set()
        loop.join(timeout=15)
    assert not loop.is_alive()
    squid.stop()  # a tunnel is logged when it closes; after the stop the log is complete
    connects = squid.requests("CONNECT")
    print(f"\n{delivered()} reports through squid used {len(connects)} CONNECT tunnel(s)")
    assert len(connects) == 1, "\n".join(connects)
    assert f"127.0.0.1:{controller.port}" in connects[0]
