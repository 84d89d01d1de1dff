"""Enrollment end to end: provisioning keys and install strings, /v1/enroll,
pinned first contact (and what an intercepting middlebox sees), device
revocation, the connector CLI, and client registration with its address pool.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from apiaccess import raw, register
from dbaccess import run_sql
from tlsserver import serve_tls
from zerogate.cli.device import enroll_device
from zerogate.netops.controller_api import (
    ControllerClient,
    TLSInterceptionSuspected,
    fetch_ca,
    make_ssl_context,
)
from zerogate.pki.ca import (
    ca_pin,
    certificate_info,
    create_ca,
    create_csr,
    generate_private_key,
    is_issued_by,
    issue_server_certificate,
)
from zerogate.pki.credentials import new_token
from zerogate.pki.install_string import InstallString, parse_install_string
from zerogate.pki.wireguard import generate_keypair, public_key
from zerogate.testbed.localrun import AccountSession, LocalController, zerogate_argv

_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


# Signed-in sessions keep a keep-alive connection open, which holds the
# controller's graceful shutdown for 5 s; close them before it is stopped.


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # Everything here talks to 127.0.0.1; a proxy from the developer's shell must not interfere.
    for name in _PROXY_VARS:
        monkeypatch.delenv(name, raising=False)


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def sql_past(controller: LocalController) -> str:
    return "now() - interval '1 minute'" if controller.database else "'2000-01-01 00:00:00.000000'"


_subnet_numbers = itertools.count(1)


def new_group(admin: AccountSession, unique: Callable[[str], str]) -> str:
    n = next(_subnet_numbers)
    name = unique("grp")
    admin.client.post("/v1/connector-groups", {"name": name, "subnets": [f"10.{n // 256}.{n % 256}.0/24"]})
    return name


def new_key(admin: AccountSession, group: str, **body: Any) -> dict[str, Any]:
    key: dict[str, Any] = admin.client.post(f"/v1/connector-groups/{group}/provisioning-keys", body)
    return key


def key_row(admin: AccountSession, key_id: int) -> dict[str, Any]:
    return next(k for k in admin.client.get("/v1/provisioning-keys") if k["id"] == key_id)


def enroll_body(key: str, name: str, csr: str | None = None, wg_public: str | None = None) -> dict[str, str]:
    return {
        "key": key,
        "name": name,
        "csr": csr or create_csr(generate_private_key(), name).decode(),
        "wg_public_key": wg_public or generate_keypair()[1],
    }


def enroll(controller: LocalController, key: str, name: str, **kw: str) -> httpx.Response:
    return raw(controller, "POST", "/v1/enroll", enroll_body(key, name, **kw))


def revision(controller: LocalController) -> int:
    with controller.client() as c:
        return int(c.get("/v1/health")["revision"])


def audit_since(admin: AccountSession, after_id: int, action: str | None = None) -> list[dict[str, Any]]:
    params: dict[str, Any] = {"after_id": after_id, "limit": 1000}
    if action:
        params["action"] = action
    records: list[dict[str, Any]] = admin.client.get("/v1/audit", params)
    return records


def audit_head(admin: AccountSession) -> int:
    return int(admin.client.get("/v1/audit/verify")["head_id"])


def spki(pem: bytes, *, private: bool = False) -> bytes:
    if private:
        key = serialization.load_pem_private_key(pem, password=None).public_key()
    else:
        key = x509.load_pem_x509_certificate(pem).public_key()
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


# ---------------------------------------------------------------------------
# provisioning keys and install strings
# ---------------------------------------------------------------------------


def test_connector_group_key_carries_url_pin_and_key_in_its_install_string(
    controller: LocalController, admin: AccountSession, unique: Callable[[str], str]
) -> None:
    group = new_group(admin, unique)
    before = time.time()
    created = new_key(admin, group, description="rack 7", max_uses=3)
    info = parse_install_string(created["install_string"])
    assert info.controller_url == controller.url
    assert info.ca_pin == controller.ca_pin
    assert info.key == created["key"] and created["key"].startswith("zgk_")
    assert created["target"] == f"connector-group:{group}"
    assert (created["state"], created["uses"], created["max_uses"]) == ("usable", 0, 3)
    # Default lifetime: 60 minutes.
    from datetime import datetime

    lifetime = datetime.fromisoformat(created["expires_at"]).timestamp() - before
    assert 59 * 60 < lifetime < 61 * 60

    # Shown once: the list has the hint only; the database only the digest.
    listed = key_row(admin, created["id"])
    assert "key" not in listed and "install_string" not in listed
    assert listed["hint"] == created["key"][:8]
    rows = run_sql(controller, f"SELECT digest FROM provisioning_keys WHERE id = {created['id']}")
    assert rows == [(hashlib.sha256(created["key"].encode()).hexdigest(),)]


def test_gateway_key_enrolls_the_gateway_and_a_new_enrollment_replaces_the_old_identity(
    controller: LocalController, admin: AccountSession, unique: Callable[[str], str]
) -> None:
    name = unique("gw")
    admin.client.post("/v1/gateways", {"name": name, "public_endpoint": "gw.example.test"})
    assert admin.client.get(f"/v1/gateways/{name}")["status"] == "not enrolled"
    created = admin.client.post(f"/v1/gateways/{name}/provisioning-keys", {"max_uses": 2})
    assert created["target"] == f"gateway:{name}"
    info = parse_install_string(created["install_string"])
    assert (info.controller_url, info.ca_pin, info.key) == (controller.url, controller.ca_pin, created["key"])

    first = enroll(controller, created["key"], "whatever-the-host-says")
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["role"] == "gateway" and body["name"] == name  # named after the gateway object
    cert = body["certificate"].encode()
    assert is_issued_by(cert, controller.ca_pem)
    assert (certificate_info(cert).common_name, certificate_info(cert).role) == (name, "gateway")
    gw = admin.client.get(f"/v1/gateways/{name}")
    assert (gw["status"], gw["device_id"]) == ("active", body["device_id"])

    second = enroll(controller, created["key"], "rebuilt-host")
    assert second.status_code == 200, second.text
    assert raw(controller, "GET", "/v1/snapshot", token=body["credential"]).status_code == 401
    snap = raw(controller, "GET", "/v1/snapshot", token=second.json()["credential"])
    assert snap.status_code == 200 and snap.json()["role"] == "gateway"


def test_enrollment_gets_a_ca_signed_certificate_and_private_keys_stay_on_the_device(
    controller: LocalController,
    admin: AccountSession,
    unique: Callable[[str], str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    group = new_group(admin, unique)
    created = new_key(admin, group)
    sent: list[tuple[str, Any]] = []
    original_post = ControllerClient.post

    def spy(self: ControllerClient, path: str, json: Any = None, *, timeout: float | None = None) -> Any:
        sent.append((path, json))
        return original_post(self, path, json, timeout=timeout)

    monkeypatch.setattr(ControllerClient, "post", spy)
    name = unique("Site A (rack 3)")  # connector names may carry spaces and symbols
    state_dir = tmp_path / "connector"
    summary = enroll_device("connector", created["install_string"], name, state_dir, force=False)
    monkeypatch.undo()

    assert [p for p, _ in sent] == ["/v1/enroll"]
    request = sent[0][1]
    assert set(request) == {"key", "name", "csr", "wg_public_key"}
    device_key = (state_dir / "device.key").read_bytes()
    wg_private = (state_dir / "wg.key").read_text().strip()
    assert device_key.decode() not in json.dumps(request) and wg_private not in json.dumps(request)
    assert b"PRIVATE KEY" not in json.dumps(request).encode()
    # What was sent is the public half of what was kept.
    csr = x509.load_pem_x509_csr(request["csr"].encode())
    assert csr.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == spki(device_key, private=True)
    assert request["wg_public_key"] == public_key(wg_private) == summary["wg_public_key"]

    cert = (state_dir / "device.pem").read_bytes()
    assert is_issued_by(cert, controller.ca_pem)
    assert spki(cert) == spki(device_key, private=True)
    info = certificate_info(cert)
    assert (info.common_name, info.role, info.is_ca) == (name, "connector", False)

    credential = (state_dir / "credential").read_text().strip()
    assert credential.startswith("zgd_")
    snap = raw(controller, "GET", "/v1/snapshot", token=credential)
    assert snap.status_code == 200, snap.text
    assert (snap.json()["role"], snap.json()["name"]) == ("connector", name)
    assert snap.json()["connector_group"]["name"] == group
    connector = admin.client.get(f"/v1/connectors/{name}")
    assert (connector["connector_group"], connector["status"]) == (group, "active")
    device = next(d for d in admin.client.get("/v1/devices") if d["id"] == summary["device_id"])
    assert device["wg_public_key"] == public_key(wg_private)
    assert key_row(admin, created["id"])["state"] == "used up"


def test_enrollment_errors_name_the_problem(
    controller: LocalController, admin: AccountSession, unique: Callable[[str], str]
) -> None:
    group = new_group(admin, unique)

    messages = []
    r = enroll(controller, new_token("zgk"), unique("c"))
    assert r.status_code == 401, r.text
    assert "not recognised" in r.json()["detail"]
    messages.append(r.json()["detail"])

    revoked = new_key(admin, group)
    admin.client.delete(f"/v1/provisioning-keys/{revoked['id']}")
    assert key_row(admin, revoked["id"])["state"] == "revoked"
    r = enroll(controller, revoked["key"], unique("c"))
    assert r.status_code == 403, r.text
    assert "revoked" in r.json()["detail"]
    messages.append(r.json()["detail"])

    expired = new_key(admin, group, ttl_minutes=5)
    run_sql(
        controller,
        f"UPDATE provisioning_keys SET expires_at = {sql_past(controller)} WHERE id = {expired['id']}",
    )
    assert key_row(admin, expired["id"])["state"] == "expired"
    r = enroll(controller, expired["key"], unique("c"))
    assert r.status_code == 403, r.text
    assert "expired" in r.json()["detail"]
    messages.append(r.json()["detail"])

    once = new_key(admin, group, max_uses=1)
    assert enroll(controller, once["key"], unique("c")).status_code == 200
    r = enroll(controller, once["key"], unique("c"))
    assert r.status_code == 403, r.text
    assert "used" in r.json()["detail"]
    messages.append(r.json()["detail"])
    # Each denial says something different, and tells the operator what to do.
    assert len(set(messages)) == 4
    assert all("install string" in m for m in messages[:3]), messages


def test_use_limit_holds_when_hosts_enroll_at_the_same_time(
    controller: LocalController, admin: AccountSession, unique: Callable[[str], str]
) -> None:
    group = new_group(admin, unique)
    key = new_key(admin, group, max_uses=2)
    bodies = [enroll_body(key["key"], unique("c")) for _ in range(6)]
    barrier = threading.Barrier(len(bodies))
    statuses: list[int] = []

    def attempt(body: dict[str, str]) -> None:
        barrier.wait()
        statuses.append(raw(controller, "POST", "/v1/enroll", body).status_code)

    threads = [threading.Thread(target=attempt, args=(b,)) for b in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(statuses) == [200, 200, 403, 403, 403, 403]
    assert key_row(admin, key["id"])["uses"] == 2
    assert len(admin.client.get(f"/v1/connector-groups/{group}")["connectors"]) == 2


def test_failed_enrollment_does_not_consume_a_use(
    controller: LocalController, admin: AccountSession, unique: Callable[[str], str]
) -> None:
    group = new_group(admin, unique)
    taken_name = unique("taken")
    first = new_key(admin, group)
    ok = enroll(controller, first["key"], taken_name)
    assert ok.status_code == 200, ok.text
    taken_wg = admin.client.get("/v1/devices")[-1]["wg_public_key"]

    key = new_key(admin, group, max_uses=1)
    # A CSR whose key the CA refuses (P-384) ...
    p384 = ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    r = enroll(controller, key["key"], unique("c"), csr=create_csr(p384, "x").decode())
    assert r.status_code == 422 and "P-256" in r.json()["detail"], r.text
    # ... a connector name that is already in use ...
    r = enroll(controller, key["key"], taken_name)
    assert r.status_code == 409 and taken_name in r.json()["detail"], r.text
    # ... a WireGuard key that is already enrolled ...
    r = enroll(controller, key["key"], unique("c"), wg_public=taken_wg)
    assert r.status_code == 409, r.text
    # ... a malformed request.
    r = raw(
        controller,
        "POST",
        "/v1/enroll",
        {"key": key["key"], "name": "x" * 51, "csr": "-" * 200, "wg_public_key": generate_keypair()[1]},
    )
    assert r.status_code == 422, r.text

    row = key_row(admin, key["id"])
    assert (row["uses"], row["state"]) == (0, "usable")
    assert enroll(controller, key["key"], unique("c")).status_code == 200
    assert key_row(admin, key["id"])["uses"] == 1


def test_every_enrollment_attempt_is_audited_and_the_key_never_is(
    controller: LocalController, admin: AccountSession, unique: Callable[[str], str]
) -> None:
    group = new_group(admin, unique)
    key = new_key(admin, group)
    revoked = new_key(admin, group)
    admin.client.delete(f"/v1/provisioning-keys/{revoked['id']}")
    unknown = new_token("zgk")
    head = audit_head(admin)
    name = unique("c")
    r = enroll(controller, key["key"], name)
    assert r.status_code == 200
    assert enroll(controller, key["key"], unique("c")).status_code == 403  # used up
    assert enroll(controller, revoked["key"], unique("c")).status_code == 403
    assert enroll(controller, unknown, unique("c")).status_code == 401

    records = audit_since(admin, head, "enroll")
    assert [rec["outcome"] for rec in records] == ["success", "denied", "denied", "denied"]
    assert all(rec["source"] == "127.0.0.1" and rec["object_type"] == "device" for rec in records)
    ok = records[0]
    assert ok["object_id"] == str(r.json()["device_id"])
    assert ok["details"]["key"] == key["key"][:8]
    assert ok["details"]["name"] == name and ok["details"]["role"] == "connector"
    assert ["used" in d["details"]["error"] for d in records[1:]] == [True, False, False]
    assert "revoked" in records[2]["details"]["error"] and "not recognised" in records[3]["details"]["error"]
    # A denial says which key was tried (by its hint) and for which name.
    assert [d["details"].get("key") for d in records] == [
        key["key"][:8],
        key["key"][:8],
        revoked["key"][:8],
        unknown[:8],
    ]
    assert all(d["details"].get("name") for d in records)

    everything = json.dumps(audit_since(admin, 0))
    for secret in (key["key"], revoked["key"], unknown, r.json()["credential"]):
        assert secret not in everything


# ---------------------------------------------------------------------------
# pinned first contact and TLS interception
# ---------------------------------------------------------------------------


def test_wrong_ca_pin_is_reported_as_interception(controller: LocalController) -> None:
    other_pin = ca_pin(create_ca("someone else")[1])
    with pytest.raises(TLSInterceptionSuspected) as exc:
        fetch_ca(controller.url, other_pin)
    assert "intercept" in str(exc.value).lower()
    assert exc.value.seen_pin == controller.ca_pin
    # The right pin works.
    assert ca_pin(fetch_ca(controller.url, controller.ca_pin)) == controller.ca_pin


@dataclass
class Interceptor:
    url: str
    seen: list[tuple[str, str]] = field(default_factory=list)


@pytest.fixture
def interceptor(controller: LocalController, tmp_path: Path) -> Iterator[Interceptor]:
    """A TLS-inspecting middlebox: terminates TLS with a certificate from its own CA
    and forwards every request, unchanged, to the real controller."""
    mitm_key, mitm_ca = create_ca("Corporate Inspection Root")
    key_pem, cert_pem = issue_server_certificate(mitm_key, mitm_ca, ["127.0.0.1"])
    (tmp_path / "mitm.pem").write_bytes(cert_pem + mitm_ca)
    (tmp_path / "mitm.key").write_bytes(key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "mitm.pem", tmp_path / "mitm.key")
    upstream = httpx.Client(
        base_url=controller.url, verify=make_ssl_context(controller.ca_pem), trust_env=False
    )
    result = Interceptor(url="")

    class Forward(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _forward(self) -> None:
            result.seen.append((self.command, self.path))
            length = int(self.headers.get("Content-Length", "0"))
            headers = {
                k: v
                for k, v in self.headers.items()
                if k.lower() in ("authorization", "content-type", "accept")
            }
            r = upstream.request(self.command, self.path, content=self.rfile.read(length), headers=headers)
            self.send_response(r.status_code)
            self.send_header("Content-Type", r.headers.get("content-type", "application/octet-stream"))
            self.send_header("Content-Length", str(len(r.content)))
            self.end_headers()
            self.wfile.write(r.content)

        do_GET = do_POST = _forward

    try:
        with serve_tls(Forward, context) as result.url:
            yield result
    finally:
        upstream.close()


def test_intercepting_middlebox_fails_loudly_and_never_sees_the_key(
    controller: LocalController,
    admin: AccountSession,
    unique: Callable[[str], str],
    interceptor: Interceptor,
    tmp_path: Path,
) -> None:
    # Sanity: the middlebox really relays the controller (it would fool an unpinned client).
    with httpx.Client(verify=False, trust_env=False) as h:  # playing the naive, unpinned client
        assert h.get(interceptor.url + "/v1/health").json()["status"] == "ok"

    # With the genuine pin, first contact through it fails and says why.
    with pytest.raises(TLSInterceptionSuspected) as exc:
        fetch_ca(interceptor.url, controller.ca_pin)
    message = str(exc.value)
    assert "intercept" in message.lower()
    assert "Corporate Inspection Root" in message

    # Enrolling through it: refused before the provisioning key is ever sent.
    group = new_group(admin, unique)
    key = new_key(admin, group)
    through_mitm = InstallString(controller_url=interceptor.url, ca_pin=controller.ca_pin, key=key["key"])
    interceptor.seen.clear()
    with pytest.raises(TLSInterceptionSuspected):
        enroll_device("connector", through_mitm.encode(), unique("c"), tmp_path / "state", force=False)
    assert interceptor.seen and all(method == "GET" for method, _ in interceptor.seen)
    assert not (tmp_path / "state").exists()
    assert key_row(admin, key["id"])["uses"] == 0


# ---------------------------------------------------------------------------
# revocation
# ---------------------------------------------------------------------------


def test_revoked_device_is_cut_off_on_the_next_request_and_the_revision_moves(
    controller: LocalController, admin: AccountSession, unique: Callable[[str], str]
) -> None:
    group = new_group(admin, unique)
    key = new_key(admin, group)
    name = unique("c")
    enrolled = enroll(controller, key["key"], name).json()
    credential = enrolled["credential"]
    snap = raw(controller, "GET", "/v1/snapshot", token=credential)
    assert snap.status_code == 200
    rev = int(snap.headers["X-Zerogate-Revision"])

    # The device is watching for changes when it gets revoked.
    outcome: dict[str, Any] = {}

    def watch() -> None:
        r = raw(controller, "GET", "/v1/snapshot", token=credential, params={"after": rev, "wait": 10})
        outcome["status"], outcome["at"] = r.status_code, time.monotonic()

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        revoked = admin.client.post(f"/v1/devices/{enrolled['device_id']}/revoke")
        revoked_at = time.monotonic()
        r = raw(controller, "GET", "/v1/snapshot", token=credential)
        assert r.status_code == 401, r.text
        assert "revoked" in r.json()["detail"]
    finally:
        watcher.join(timeout=15)
    assert outcome["status"] == 401
    assert outcome["at"] - revoked_at < 2.0
    assert revoked["status"] == "revoked" and revoked["revoked_at"] is not None
    assert revision(controller) > rev
    assert admin.client.get(f"/v1/connectors/{name}")["status"] == "revoked"


# ---------------------------------------------------------------------------
# connector CLI end to end
# ---------------------------------------------------------------------------


def _cli_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("ZEROGATE_") and k not in _PROXY_VARS}


def test_connector_enroll_cli_writes_keys_and_credential_privately(
    controller: LocalController, admin: AccountSession, unique: Callable[[str], str], tmp_path: Path
) -> None:
    group = new_group(admin, unique)
    key = new_key(admin, group)
    name = unique("edge")
    state_dir = tmp_path / "var" / "connector"
    argv = [
        *zerogate_argv(),
        "connector",
        "enroll",
        key["install_string"],
        "--name",
        name,
        "--state-dir",
        str(state_dir),
        "--json",
    ]
    r = subprocess.run(argv, capture_output=True, text=True, env=_cli_env(), timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert (summary["role"], summary["name"], summary["ca_pin"]) == ("connector", name, controller.ca_pin)

    files = {p.name: p.stat().st_mode & 0o777 for p in state_dir.iterdir()}
    assert set(files) == {"device.key", "wg.key", "credential", "device.pem", "ca.pem", "device.json"}
    for secret in ("device.key", "wg.key", "credential"):
        assert files[secret] == 0o600, (secret, oct(files[secret]))
    assert state_dir.stat().st_mode & 0o777 == 0o700

    assert ca_pin((state_dir / "ca.pem").read_bytes()) == controller.ca_pin
    cert = (state_dir / "device.pem").read_bytes()
    assert is_issued_by(cert, controller.ca_pem)
    assert spki(cert) == spki((state_dir / "device.key").read_bytes(), private=True)
    wg_public = public_key((state_dir / "wg.key").read_text().strip())
    assert summary["wg_public_key"] == wg_public
    device = next(d for d in admin.client.get("/v1/devices") if d["id"] == summary["device_id"])
    assert (device["name"], device["wg_public_key"], device["role"]) == (name, wg_public, "connector")
    snap = raw(controller, "GET", "/v1/snapshot", token=(state_dir / "credential").read_text().strip())
    assert snap.status_code == 200 and snap.json()["name"] == name

    # Running it again does not clobber the enrollment.
    kept = {p.name: p.read_bytes() for p in state_dir.iterdir()}
    again = subprocess.run(argv, capture_output=True, text=True, env=_cli_env(), timeout=60, check=False)
    assert again.returncode == 1
    assert "already holds" in again.stderr and "--force" in again.stderr
    assert {p.name: p.read_bytes() for p in state_dir.iterdir()} == kept


def test_connector_enroll_cli_reports_a_used_key_clearly(
    controller: LocalController, admin: AccountSession, unique: Callable[[str], str], tmp_path: Path
) -> None:
    group = new_group(admin, unique)
    key = new_key(admin, group)
    assert enroll(controller, key["key"], unique("c")).status_code == 200
    argv = [
        *zerogate_argv(),
        "connector",
        "enroll",
        key["install_string"],
        "--name",
        unique("c"),
        "--state-dir",
        str(tmp_path / "state"),
    ]
    r = subprocess.run(argv, capture_output=True, text=True, env=_cli_env(), timeout=60, check=False)
    assert r.returncode == 1
    assert "used" in r.stderr and "403" in r.stderr
    assert key["key"] not in r.stderr + r.stdout
    assert not (tmp_path / "state").exists()


# ---------------------------------------------------------------------------
# client registration and the address pool
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pool_user(controller: LocalController, admin: AccountSession) -> AccountSession:
    return controller.create_user(admin, "pool-user", [])


def test_client_gets_an_address_from_the_default_block(
    controller: LocalController, pool_user: AccountSession, unique: Callable[[str], str]
) -> None:
    r = register(controller, pool_user, unique("laptop"))
    assert r.status_code == 200, r.text
    body = r.json()
    address = IPv4Address(body["address"])
    assert address in IPv4Network("100.64.0.0/16")
    assert address not in (IPv4Address("100.64.0.0"), IPv4Address("100.64.0.1"))  # network, gateway
    assert (body["address_block"], body["moved_from_default_block"]) == ("100.64.0.0/16", False)
    cert = body["certificate"].encode()
    assert is_issued_by(cert, controller.ca_pem) and certificate_info(cert).role == "client"
    snap = raw(controller, "GET", "/v1/snapshot", token=body["credential"])
    assert snap.status_code == 200
    assert (snap.json()["role"], snap.json()["address"]) == ("client", body["address"])


def test_client_registration_needs_a_user_session(
    controller: LocalController, admin: AccountSession, unique: Callable[[str], str]
) -> None:
    r = register(controller, admin, unique("admin-laptop"))
    assert r.status_code == 403, r.text
    r = raw(
        controller,
        "POST",
        "/v1/clients",
        {"name": "x", "csr": "-" * 200, "wg_public_key": generate_keypair()[1]},
    )
    assert r.status_code == 401, r.text


def test_client_moves_to_the_next_block_when_the_default_collides(
    controller: LocalController, pool_user: AccountSession, unique: Callable[[str], str]
) -> None:
    r = register(controller, pool_user, unique("home"), ["192.168.1.0/24", "100.64.0.0/16"])
    assert r.status_code == 200, r.text
    body = r.json()
    assert IPv4Address(body["address"]) in IPv4Network("100.65.0.0/16")
    assert (body["address_block"], body["moved_from_default_block"]) == ("100.65.0.0/16", True)


def test_client_whose_networks_cover_every_block_gets_a_409_naming_the_collision(
    controller: LocalController, pool_user: AccountSession, unique: Callable[[str], str]
) -> None:
    r = register(controller, pool_user, unique("carrier"), ["100.64.0.0/10"])
    assert r.status_code == 409, r.text
    detail = r.json()["detail"]
    assert "100.64.0.0/10" in detail and "overlaps" in detail


def test_client_addresses_never_repeat_even_after_revocation(
    controller: LocalController,
    admin: AccountSession,
    pool_user: AccountSession,
    unique: Callable[[str], str],
) -> None:
    first = [register(controller, pool_user, unique("dev")).json() for _ in range(3)]
    admin.client.post(f"/v1/devices/{first[1]['device_id']}/revoke")
    later = [register(controller, pool_user, unique("dev")).json() for _ in range(2)]
    addresses = [d["address"] for d in first + later]
    assert len(set(addresses)) == len(addresses), addresses
    assert first[1]["address"] not in [d["address"] for d in later]
    every = [d["address"] for d in admin.client.get("/v1/devices", {"role": "client"})]
    assert len(set(every)) == len(every)
