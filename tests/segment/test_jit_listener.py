"""The just-in-time HTTPS listener over real TLS, with the controller call faked (the one
thing faked: tests that need it say ``fake_controller``). The listener, TLS, the SSH
host and its nftables are real: an approved request from a client namespace opens
exactly that client's address to the port on an :class:`~zerogate.testbed.sshhosts.SshFleet`
host, whatever the request's headers claim.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from jitfake import FakeController, loopback_listener, tls_files
from zerogate.netops.controller_api import ApiError
from zerogate.segment import hosts
from zerogate.segment.checks import tcp_connects
from zerogate.segment.jit import JitKeeper
from zerogate.segment.jit_listener import (
    API_PATH,
    MAX_BODY,
    MAX_CONNECTIONS,
    THROTTLE_DEFAULT,
    THROTTLE_ENTRIES,
    THROTTLE_MAX,
    JitListener,
    JitService,
    ThrottleMemory,
    server_context,
)
from zerogate.segment.ssh import Access
from zerogate.testbed.lab import wait_for
from zerogate.testbed.sshhosts import SERVER_ADDRESS, SshFleet, SshHost, call_in_netns, client_address

PASSWORD = "correct horse battery"
GOOD: dict[str, Any] = {"username": "alice", "password": PASSWORD, "totp": "123456", "asset": "host0",
                        "port": 8080, "protocol": "tcp", "duration": 3600}  # fmt: skip


def ctx(ca: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca))


@pytest.fixture
def tls(tmp_path: Path) -> tuple[Path, Path, Path]:
    return tls_files(tmp_path)


@pytest.fixture
def loopback(tls: tuple[Path, Path, Path]) -> Iterator[tuple[str, FakeController, Path]]:
    with loopback_listener(tls) as served:
        yield served


def test_page_headers_and_tls_1_2_minimum(
    loopback: tuple[str, FakeController, Path], tls: tuple[Path, Path, Path]
) -> None:
    url, _, ca = loopback
    _, cert, key = tls
    r = httpx.get(url + "/", verify=ctx(ca))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert r.headers["content-security-policy"].startswith("default-src 'none'; form-action 'self'")
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["referrer-policy"] == "no-referrer"
    assert "<script" not in r.text and 'name="totp"' in r.text and 'value="86400"' in r.text
    assert httpx.get(url + "/other", verify=ctx(ca)).status_code == 404

    # TLS 1.2 is accepted; the server's floor is 1.2 (this OpenSSL's clients refuse older
    # versions themselves, so an old client cannot show the server's refusal here)
    port = int(url.rsplit(":", 1)[1])
    client = ctx(ca)
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with client.wrap_socket(raw, server_hostname="127.0.0.1") as tls_sock:
            assert tls_sock.version() == "TLSv1.2"
    assert server_context(str(cert), str(key)).minimum_version == ssl.TLSVersion.TLSv1_2


def test_silent_connections_hold_a_bounded_number_of_slots(
    loopback: tuple[str, FakeController, Path],
) -> None:
    url, _, ca = loopback
    port = int(url.rsplit(":", 1)[1])
    silent = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(MAX_CONNECTIONS)]
    try:
        # each silent connection holds its thread in the handshake; one more is closed at once
        def refused() -> bool:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as extra:
                return extra.recv(1) == b""

        wait_for(refused, 10, "a connection beyond the limit to be closed")
    finally:
        for s in silent:
            s.close()

    def page_ok() -> bool:
        try:
            return httpx.get(url + "/", verify=ctx(ca), timeout=5).status_code == 200
        except httpx.HTTPError:  # slots not yet released: closed at once
            return False

    wait_for(page_ok, 10, "the page again once the silent connections are gone")


@pytest.mark.parametrize(
    ("status", "retry_after"), [(401, None), (403, None), (404, None), (422, None), (429, 30.0)]
)
def test_controller_refusals_pass_through_fake_controller(
    loopback: tuple[str, FakeController, Path], status: int, retry_after: float | None
) -> None:
    url, controller, ca = loopback
    controller.refuse = ApiError(status, f"refused {PASSWORD}", {"detail": "x"}, retry_after)
    r = httpx.post(url + API_PATH, json=GOOD, verify=ctx(ca))
    assert r.status_code == status
    detail = r.json()["detail"]
    assert isinstance(detail, str) and detail and PASSWORD not in r.text and "alice" not in r.text
    assert r.headers.get("retry-after") == (None if retry_after is None else "30")
    assert controller.bodies[0]["source"] == "127.0.0.1"
    # the form answers the same status, as a page
    form = httpx.post(url + "/", data={k: str(v) for k, v in GOOD.items()}, verify=ctx(ca))
    assert form.status_code == status and PASSWORD not in form.text and "<form" in form.text


def test_oversize_and_invalid_bodies_are_refused_fake_controller(
    loopback: tuple[str, FakeController, Path],
) -> None:
    url, controller, ca = loopback

    def post(content: bytes, content_type: str = "application/json", **headers: str) -> httpx.Response:
        return httpx.post(
            url + API_PATH, content=content, headers={"Content-Type": content_type, **headers}, verify=ctx(ca)
        )

    assert post(b"{" + b" " * MAX_BODY + b"}").status_code == 413
    assert post(b"{not json").status_code == 400
    assert post(b"[1, 2]").status_code == 422
    assert post(json.dumps(GOOD).encode(), "text/plain").status_code == 415
    for field, value in [("totp", "12345"), ("totp", "١٢٣٤٥٦"), ("password", "a\x00b"), ("password", ""),
                         ("duration", 60), ("port", 0), ("port", 70000), ("port", True), ("protocol", "icmp"),
                         ("username", "Al ice"), ("asset", "../etc"), ("asset", None)]:  # fmt: skip
        r = post(json.dumps({**GOOD, field: value}).encode())
        assert r.status_code == 422, (field, value, r.text)
        assert not isinstance(value, str) or len(value) < 3 or value not in r.text
    # a cross-site form or API post is refused before anything is read
    form = {k: str(v) for k, v in GOOD.items()}
    assert (
        httpx.post(
            url + "/", data=form, headers={"Origin": "https://evil.example"}, verify=ctx(ca)
        ).status_code
        == 403
    )
    assert (
        httpx.post(url + "/", data=form, headers={"Sec-Fetch-Site": "cross-site"}, verify=ctx(ca)).status_code
        == 403
    )
    assert post(json.dumps(GOOD).encode(), Origin="https://evil.example").status_code == 403
    assert controller.bodies == []  # none of these reached the controller
    # the same form from the page itself gets through to the controller (which refuses here)
    controller.refuse = ApiError(401, "no", None)
    same = httpx.post(
        url + "/", data=form, headers={"Origin": url, "Sec-Fetch-Site": "same-origin"}, verify=ctx(ca)
    )
    assert same.status_code == 401 and len(controller.bodies) == 1


# --------------------------------------------------------------------------- with a real host

needs_hosts = pytest.mark.skipif(
    os.geteuid() != 0
    or not all(shutil.which(t) for t in ("ip", "nft", "ssh", "ssh-keyscan", "setsid"))
    or not Path("/usr/sbin/sshd").exists(),
    reason="needs root, iproute2, nftables and openssh (client and server)",
)


@pytest.fixture
def service_on(fleet: SshFleet) -> Iterator[SshHost]:
    host = fleet.hosts[0]
    argv = [sys.executable, "-m", "http.server", "8080", "--bind", str(host.address)]
    proc = subprocess.Popen(
        ["ip", "netns", "exec", host.ns, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for(
            lambda: call_in_netns(host.ns, lambda: tcp_connects(host.address, 8080, 1.0)), 30, "port 8080"
        )
        yield host
    finally:
        proc.kill()
        proc.wait(5)


@needs_hosts
def test_json_request_opens_the_peer_address_on_the_host_fake_controller(
    fleet: SshFleet, service_on: SshHost, tls: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    host = service_on
    access = Access(fleet.key, tmp_path / "state", remote_dir=str(tmp_path / "on-host"))
    asset = host.asset(mode="protected", rules_revision=2)
    assert fleet.call(lambda: hosts.enforce(asset, access, [SERVER_ADDRESS])).outcome == "applied"

    def reaches(client: int) -> bool:
        return call_in_netns(fleet.client_ns(client), lambda: tcp_connects(host.address, 8080, 0.5))

    assert not reaches(0) and not reaches(1)
    keeper = JitKeeper(access)
    keeper.update([asset])
    controller = FakeController()
    service = JitService(keeper, controller)
    listener = fleet.call(
        lambda: JitListener(service, f"{SERVER_ADDRESS}:0", str(tls[1]), str(tls[2])).start()
    )
    try:
        url = f"https://{SERVER_ADDRESS}:{listener.port}{API_PATH}"
        headers = {"X-Forwarded-For": str(client_address(1))}  # never believed
        r = call_in_netns(
            fleet.client_ns(0),
            lambda: httpx.post(url, json=GOOD, headers=headers, verify=ctx(tls[0]), timeout=30),
        )
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["source"] == str(client_address(0))
        assert (body["asset"], body["port"], body["protocol"]) == ("host0", 8080, "tcp")
        assert datetime.fromisoformat(body["expires_at"]) > datetime.now(UTC) + timedelta(minutes=59)
        sent = controller.bodies[0]
        assert sent["source"] == str(client_address(0)) and sent["duration"] == 3600
        assert reaches(0)  # at once: no snapshot in between
        assert not reaches(1)
        # approved for an asset this server does not manage: nothing opens, a clear status
        r = call_in_netns(
            fleet.client_ns(1),
            lambda: httpx.post(url, json={**GOOD, "asset": "elsewhere"}, verify=ctx(tls[0]), timeout=30),
        )
        assert r.status_code == 503 and not reaches(1)
    finally:
        listener.stop()


def test_throttle_memory_expires_and_stays_bounded() -> None:
    """The listener answers a source the controller throttled itself until Retry-After
    runs out (capped), and remembers a bounded number of (source, user) pairs."""
    now = [1000.0]
    memory = ThrottleMemory(clock=lambda: now[0])
    memory.throttled("10.0.0.1", "alice", 30.0)
    assert memory.wait("10.0.0.1", "alice") == 30.0
    assert memory.wait("10.0.0.1", "bob") == 0.0 and memory.wait("10.0.0.2", "alice") == 0.0
    memory.throttled("10.0.0.3", "carol", 10**9)  # capped, whatever the controller says
    assert memory.wait("10.0.0.3", "carol") == THROTTLE_MAX
    now[0] += 30.0
    assert memory.wait("10.0.0.1", "alice") == 0.0 and ("10.0.0.1", "alice") not in memory.until
    for i in range(THROTTLE_ENTRIES + 10):
        memory.throttled(f"10.1.{i // 256}.{i % 256}", "mallory", None)
    assert len(memory.until) <= THROTTLE_ENTRIES
    last = THROTTLE_ENTRIES + 9
    assert memory.wait(f"10.1.{last // 256}.{last % 256}", "mallory") == THROTTLE_DEFAULT
