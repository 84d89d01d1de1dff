"""The API's front door: what a fuzzer or an attacker sends gets a clean, small
4xx in the one error shape, and the OpenAPI document says so (issue 8,
defects 1, 2, 5, 6 and 16).

Bad input is sent as raw bytes where the client library would refuse to
encode it (a lone surrogate, NaN), over a raw TLS socket where a body is
meant to be refused before it is all sent.
"""

from __future__ import annotations

import json
import re
import select
import socket
import ssl
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from apiaccess import enroll_connector, raw
from dbaccess import run_sql
from zerogate.netops.controller_api import make_ssl_context
from zerogate.pki.wireguard import generate_keypair
from zerogate.testbed.localrun import AccountSession, LocalController

MIB = 1024 * 1024
TOO_BIG = 2**63  # past any 64-bit integer
PAST_INT4 = 2**31  # past a PostgreSQL INTEGER, which row ids are


# ----------------------------------------------------------------- helpers


def send(
    controller: LocalController,
    method: str,
    path: str,
    content: bytes | None = None,
    token: str | None = None,
    content_type: str | None = "application/json",
) -> httpx.Response:
    """A request with exactly these body bytes (the JSON text may hold what json.dumps refuses)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if content_type:
        headers["Content-Type"] = content_type
    with httpx.Client(
        base_url=controller.url, verify=make_ssl_context(controller.ca_pem), trust_env=False, timeout=30
    ) as h:
        return h.request(method, path, content=content, headers=headers)


def detail_of(r: httpx.Response) -> str:
    """The error text; every refusal is ``{"detail": "<text>"}``."""
    assert r.headers["content-type"].startswith("application/json"), r.text[:200]
    body = r.json()
    assert set(body) == {"detail"} and isinstance(body["detail"], str), body
    return str(body["detail"])


def tracebacks(controller: LocalController) -> int:
    return controller.output().count("Traceback")


def status_file(controller: LocalController) -> dict[str, int]:
    """The controller process's memory figures (kB) from /proc."""
    assert controller.process is not None
    text = Path(f"/proc/{controller.process.pid}/status").read_text()
    return {k: int(v.split()[0]) for k, v in re.findall(r"(Vm\w+):\s+(\d+ kB)", text)}


@pytest.fixture(scope="module")
def device(controller: LocalController, admin: AccountSession) -> dict[str, Any]:
    """An enrolled connector: its id and credential."""
    return enroll_connector(controller, admin, "bnd", "10.77.0.0/24")


@pytest.fixture(scope="module")
def user(controller: LocalController, admin: AccountSession) -> Iterator[AccountSession]:
    session = controller.create_user(admin, f"bnd-{uuid.uuid4().hex[:6]}", [])
    yield session
    session.client.close()


# ----------------------------------------------------------------- defect 1: the validation-error path

LOGIN = '{"username": %s, "password": "some password", "totp": %s}'


@pytest.mark.parametrize(
    ("username", "totp"),
    [
        ('"x\\ud800"', '"123456"'),  # a lone surrogate: valid JSON, not encodable as UTF-8
        ('"alice"', "NaN"),
        ('"alice"', "Infinity"),
        ('"alice"', "-Infinity"),
        ('"alice"', "1e400"),
        ('"\\u001b[2J\\u0000"', '"123456"'),
    ],
    ids=["lone-surrogate", "nan", "infinity", "minus-infinity", "1e400", "escape-and-nul"],
)
def test_unrenderable_input_to_login_gets_a_clean_422(
    controller: LocalController, username: str, totp: str
) -> None:
    before = tracebacks(controller)
    r = send(controller, "POST", "/v1/auth/login", (LOGIN % (username, totp)).encode())
    assert r.status_code == 422, r.text[:300]
    detail = detail_of(r)
    assert "\x1b" not in detail and "\x00" not in detail and "\ud800" not in detail
    assert tracebacks(controller) == before


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/groups", '{"name": "g\\udfff"}'),
        ("POST", "/v1/tokens", '{"name": "t", "ttl_days": NaN}'),
        ("POST", "/v1/connector-groups", '{"name": "cg", "subnets": [Infinity]}'),
        ("PUT", "/v1/address-pool", '{"blocks": ["\\ud800"]}'),
        ("POST", "/v1/policy/explain", '{"username": "u", "destination": "10.0.0.1", "port": 1e400}'),
    ],
    ids=["group-name", "token-ttl", "subnet", "pool-block", "explain-port"],
)
def test_unrenderable_input_gets_a_clean_422_on_every_json_endpoint(
    controller: LocalController, admin: AccountSession, method: str, path: str, body: str
) -> None:
    before = tracebacks(controller)
    r = send(controller, method, path, body.encode(), token=admin.token)
    assert r.status_code == 422, r.text[:300]
    detail_of(r)
    assert tracebacks(controller) == before


@pytest.mark.parametrize(
    ("content", "content_type", "fragment"),
    [
        (b'{"username": "alice", ', "application/json", "body: not valid JSON"),
        (b"\xff\xfe\x00garbage", "application/json", "body"),
        (b"[1, 2, 3]", "application/json", "body"),
        (b'"just a string"', "application/json", "body"),
        (b"username=alice&password=x", "application/x-www-form-urlencoded", "body"),
        (b'{"username": "alice"}', "text/plain", "body"),
        (None, None, "body"),
    ],
    ids=["truncated", "not-utf8", "array", "string", "form", "text-plain", "empty"],
)
def test_malformed_bodies_get_a_clean_4xx(
    controller: LocalController, content: bytes | None, content_type: str | None, fragment: str
) -> None:
    before = tracebacks(controller)
    r = send(controller, "POST", "/v1/auth/login", content, content_type=content_type)
    assert r.status_code in (400, 422), r.text[:300]
    assert fragment in detail_of(r)
    assert tracebacks(controller) == before


def test_refusals_never_echo_the_input(controller: LocalController, admin: AccountSession) -> None:
    """A 100 kB bad value (and a 100 kB unknown key) come back as a short message."""
    huge = "A" * 100_000
    r = send(
        controller,
        "POST",
        "/v1/connector-groups",
        json.dumps({"name": "echo", "subnets": [huge], huge: 1}).encode(),
        token=admin.token,
    )
    assert r.status_code == 422
    detail = detail_of(r)
    assert len(r.content) < 2000, len(r.content)
    assert "subnets.0" in detail and "not an IP address" in detail  # still says what and where
    many = send(
        controller,
        "POST",
        "/v1/groups",
        json.dumps({"name": "g", "members": ["-"] * 5000}).encode(),
        token=admin.token,
    )
    assert many.status_code == 422
    assert "and 4990 more problems" in detail_of(many) and len(many.content) < 4000


# ----------------------------------------------------------------- defect 2: integers past 64 bits


def last_audit(admin: AccountSession, action: str) -> dict[str, Any]:
    records: list[dict[str, Any]] = admin.client.get("/v1/audit", {"action": action, "limit": 1000})
    return records[-1]


def test_a_query_parameter_the_operation_does_not_take_is_refused(
    controller: LocalController, admin: AccountSession
) -> None:
    """A misspelt filter is an error, not a silently wider answer; the input is not echoed."""
    assert raw(controller, "GET", "/v1/devices?role=connector", None, admin.token).status_code == 200
    for path in ("/v1/devices?rol=connector", "/v1/groups?x%3Cscript%3E=1", "/v1/health?verbose=1"):
        r = raw(controller, "GET", path, None, admin.token)
        assert r.status_code == 422, (path, r.text)
        assert "script" not in r.text and "rol=" not in r.text and "verbose" not in r.text
    assert "it takes: role" in raw(controller, "GET", "/v1/devices?rol=x", None, admin.token).text


@pytest.mark.parametrize(
    "number", [PAST_INT4, TOO_BIG, 10**40, -(2**63) - 1, 0], ids=["2^31", "2^63", "10^40", "-2^63-1", "0"]
)
@pytest.mark.parametrize(
    ("method", "path", "action", "who"),
    [
        ("DELETE", "/v1/provisioning-keys/{n}", "revoke-provisioning-key", "admin"),
        ("DELETE", "/v1/tokens/{n}", "revoke-token", "admin"),
        ("POST", "/v1/devices/{n}/revoke", "revoke-device", "admin"),
        ("POST", "/v1/clients/{n}/session", "renew-session", "user"),
    ],
    ids=["provisioning-key", "token", "device", "client-session"],
)
def test_an_id_no_row_can_have_is_not_found_and_audited(
    controller: LocalController,
    admin: AccountSession,
    user: AccountSession,
    method: str,
    path: str,
    action: str,
    who: str,
    number: int,
) -> None:
    token = admin.token if who == "admin" else user.token
    before = tracebacks(controller)
    r = raw(controller, method, path.format(n=number), token=token)
    assert r.status_code == 404, r.text[:300]
    detail = detail_of(r)
    assert len(detail) < 120
    record = last_audit(admin, action)
    assert record["outcome"] == "denied"
    assert record["object_id"] == (str(number) if len(str(number)) <= 20 else record["object_id"])
    assert len(record["object_id"]) <= 22 and record["details"]["error"] == detail
    assert tracebacks(controller) == before


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"after_id": PAST_INT4}, 422),
        ({"after_id": TOO_BIG}, 422),
        ({"after_id": 10**40}, 422),
        ({"after_id": -1}, 422),
        ({"after_id": PAST_INT4 - 1}, 200),
        ({"limit": 10**30}, 422),
    ],
    ids=["after-2^31", "after-2^63", "after-10^40", "after-negative", "after-max", "limit-huge"],
)
def test_audit_query_numbers_are_bounded(
    controller: LocalController, admin: AccountSession, params: dict[str, Any], status: int
) -> None:
    r = raw(controller, "GET", "/v1/audit", token=admin.token, params=params)
    assert r.status_code == status, r.text[:300]
    if status == 422:
        assert "query parameter" in detail_of(r)
    else:
        assert r.json() == []


@pytest.mark.parametrize(
    "params",
    [{"after": TOO_BIG, "wait": 0}, {"after": 10**40, "wait": 0}, {"wait": "nan"}, {"wait": "1e400"}],
    ids=["after-2^63", "after-10^40", "wait-nan", "wait-inf"],
)
def test_snapshot_watch_numbers_never_500(
    controller: LocalController, device: dict[str, Any], params: dict[str, Any]
) -> None:
    r = raw(controller, "GET", "/v1/snapshot", token=device["credential"], params=params)
    assert r.status_code in (200, 204, 422), r.text[:300]
    if r.status_code == 422:
        detail_of(r)


# ----------------------------------------------------------------- defect 5: device reports


def good_report() -> dict[str, Any]:
    """A report as connector/daemon.py builds it."""
    return {
        "version": "0.1.0",
        "interface": "zgc0",
        "peers": [
            {
                "role": "gateway",
                "public_key": generate_keypair()[1],
                "endpoint": "203.0.113.7:51820",
                "latest_handshake": int(time.time()),
                "rx_bytes": 1234,
                "tx_bytes": 5678,
            }
        ],
        "details": {"revision": 7, "tunnel_up": True, "wireguard": "kernel"},
    }


def listed(controller: LocalController, admin: AccountSession, device_id: int) -> dict[str, Any]:
    r = raw(controller, "GET", "/v1/devices", token=admin.token)
    assert r.status_code == 200, r.text[:300]
    return next(d for d in r.json() if d["id"] == device_id)


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"x": value}
    return value


def test_a_daemon_report_is_stored_and_listed(
    controller: LocalController, admin: AccountSession, device: dict[str, Any]
) -> None:
    report = good_report()
    r = raw(controller, "POST", "/v1/report", report, token=device["credential"])
    assert r.status_code == 204, r.text[:300]
    shown = admin.client.get("/v1/devices", {"role": "connector"})
    mine = next(d for d in shown if d["id"] == device["device_id"])
    assert mine["report"]["peers"] == [
        report["peers"][0]
        | {"name": None, "address": None, "device_id": None, "up": None, "active": None, "rtt_ms": None}
    ]
    assert mine["report"]["details"]["tunnel_up"] is True and mine["report_problem"] is None


@pytest.mark.parametrize(
    ("change", "status"),
    [
        (lambda r: r["details"].update(deep=nested(500)), 422),
        (lambda r: r["peers"][0].update(rtt_ms=float("nan")), 422),
        (lambda r: r["peers"][0].update(up=1), 422),
        (lambda r: r["peers"][0].update(rx_bytes=2**64), 422),
        (lambda r: r.update(peers=[{"role": "unknown", "public_key": "k"}] * 10_001), 422),
        (lambda r: r.update(version="1.0\n\x1b[2J"), 422),
        (lambda r: r["details"].update(active_connectors={f"g{i}": "c" for i in range(1001)}), 422),
        (lambda r: r["peers"][0].update(public_key="k" * 10 * MIB), 413),
    ],
    ids=[
        "nested-500",
        "nan",
        "int-as-bool",
        "counter-past-64-bits",
        "10001-peers",
        "control-characters",
        "1001-active-connectors",
        "10-MB",
    ],
)
def test_a_bad_report_is_refused_and_the_listing_stays_usable(
    controller: LocalController,
    admin: AccountSession,
    device: dict[str, Any],
    change: Callable[[dict[str, Any]], None],
    status: int,
) -> None:
    assert raw(controller, "POST", "/v1/report", good_report(), token=device["credential"]).status_code == 204
    before = listed(controller, admin, device["device_id"])["report"]
    report = good_report()
    change(report)
    body = json.dumps(report).encode()  # allows NaN, as a hostile device would send it
    r = send(controller, "POST", "/v1/report", body, token=device["credential"])
    assert r.status_code == status, r.text[:300]
    assert len(detail_of(r)) < 2500
    assert listed(controller, admin, device["device_id"])["report"] == before


@pytest.mark.parametrize(
    "stored",
    [
        json.dumps(good_report() | {"at": "2025-01-01T00:00:00+00:00", "details": nested(500)}),
        "10-MB",  # built by the database itself: too long for one psql argument
        json.dumps(good_report()),  # no time of receipt
        json.dumps([1, 2, 3]),
    ],
    ids=["nested-500", "10-MB", "missing-field", "not-an-object"],
)
def test_a_bad_report_in_the_database_shows_as_unavailable(
    controller: LocalController, admin: AccountSession, device: dict[str, Any], stored: str
) -> None:
    """Written past the API (by an older controller, or by hand): the listing still works."""
    before = tracebacks(controller)
    if stored == "10-MB":
        value = (
            "('{\"padding\": \"' || repeat('p', 10485760) || '\"}')::json"
            if controller.database
            else "'{\"padding\": \"' || replace(hex(zeroblob(5242880)), '0', 'p') || '\"}'"
        )
    else:
        value = "'" + stored.replace("'", "''") + "'"
    run_sql(controller, f"UPDATE devices SET report = {value} WHERE id = {device['device_id']}")
    if stored == "10-MB":
        length = "length(report::text)" if controller.database else "length(report)"
        query = f"SELECT {length} FROM devices WHERE id = {device['device_id']}"
        assert int(run_sql(controller, query)[0][0]) > 10 * MIB
    shown = listed(controller, admin, device["device_id"])
    assert shown["report"] is None
    assert "unreadable" in shown["report_problem"]
    by_role = raw(controller, "GET", "/v1/devices", token=admin.token, params={"role": "connector"})
    assert by_role.status_code == 200, by_role.text[:300]
    # the device's next report replaces it
    r = raw(controller, "POST", "/v1/report", good_report(), token=device["credential"])
    assert r.status_code == 204, r.text[:300]
    shown = listed(controller, admin, device["device_id"])
    assert shown["report"]["version"] == "0.1.0" and shown["report_problem"] is None
    assert tracebacks(controller) == before


# ----------------------------------------------------------------- defect 6: body size


class RawTls:
    """One TLS connection to the controller, written and read by hand, so a body
    can be declared, streamed and cut off as no HTTP client library would."""

    def __init__(self, controller: LocalController) -> None:
        context = make_ssl_context(controller.ca_pem)
        plain = socket.create_connection(("127.0.0.1", controller.port), timeout=30)
        self.sock = context.wrap_socket(plain, server_hostname="127.0.0.1")
        self.host = f"127.0.0.1:{controller.port}"
        self.received = b""

    def close(self) -> None:
        self.sock.close()

    def head(self, path: str, headers: dict[str, str]) -> None:
        lines = [f"POST {path} HTTP/1.1", f"Host: {self.host}", "Content-Type: application/json"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())

    def answered(self) -> bool:
        """Whether response bytes arrived (without waiting for them)."""
        if self.sock.pending() or select.select([self.sock], [], [], 0)[0]:
            self.sock.settimeout(0)
            try:
                chunk = self.sock.recv(65536)
            except ssl.SSLWantReadError:
                chunk = b""  # only TLS records (session tickets), no response yet
            except (ssl.SSLError, OSError):
                return True  # closed: whatever came before is in self.received
            finally:
                self.sock.settimeout(30)
            self.received += chunk
        return bool(self.received)

    def response(self, timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self.received and time.monotonic() < deadline:
            self._read(deadline)
        head, _, body = self.received.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
        while len(body) < int(headers.get("content-length", "0")) and time.monotonic() < deadline:
            before = len(self.received)
            self._read(deadline)
            body = self.received.partition(b"\r\n\r\n")[2]
            if len(self.received) == before:
                break
        return int(status_line.split()[1]), headers, body

    def _read(self, deadline: float) -> None:
        self.sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            self.received += self.sock.recv(65536)
        except (TimeoutError, ssl.SSLError, OSError):
            pass


def stream_until_refused(conn: RawTls, total: int) -> int:
    """Send up to ``total`` bytes of body in chunks; stop at the first sign of an answer."""
    chunk = b"a" * 65536
    sent = 0
    try:
        while sent < total and not conn.answered():
            conn.sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            sent += len(chunk)
    except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
        pass  # the server closed after its 413: expected
    return sent


def test_a_declared_oversized_body_is_refused_before_it_is_sent(controller: LocalController) -> None:
    conn = RawTls(controller)
    try:
        conn.head("/v1/auth/login", {"Content-Length": str(100 * MIB)})
        status, headers, body = conn.response()  # nothing of the body was sent
    finally:
        conn.close()
    assert status == 413
    assert headers["connection"] == "close"
    assert "larger than this endpoint accepts (1048576 bytes)" in json.loads(body)["detail"]


def test_a_streamed_oversized_body_is_refused_at_the_limit_without_growing_memory(
    controller: LocalController,
) -> None:
    """100 MB, chunked (no length to refuse up front), to the unauthenticated login."""
    before = status_file(controller)
    conn = RawTls(controller)
    try:
        conn.head("/v1/auth/login", {"Transfer-Encoding": "chunked"})
        conn.sock.sendall(b'5\r\n{"a":\r\n')
        sent = stream_until_refused(conn, 100 * MIB)
        status, _, body = conn.response()
    finally:
        conn.close()
    after = status_file(controller)
    grown_mb = (after["VmHWM"] - before["VmHWM"]) / 1024
    print(
        f"sent {sent / MIB:.1f} MiB before the 413; peak RSS {before['VmHWM'] / 1024:.0f} -> "
        f"{after['VmHWM'] / 1024:.0f} MB (+{grown_mb:.1f}), RSS now {after['VmRSS'] / 1024:.0f} MB"
    )
    assert status == 413 and "larger than" in json.loads(body)["detail"]
    assert sent < 20 * MIB, "the controller kept reading far past its limit"
    assert grown_mb < 20, f"peak memory grew by {grown_mb:.0f} MB for a refused body"


def test_malformed_content_length_is_refused(controller: LocalController) -> None:
    """The HTTP server refuses it before the app (which would too: limits.BodyLimit)."""
    before = tracebacks(controller)
    conn = RawTls(controller)
    try:
        conn.head("/v1/auth/login", {"Content-Length": "12abc"})
        status, _, _ = conn.response()
    finally:
        conn.close()
    assert status == 400
    assert tracebacks(controller) == before


def test_a_large_member_list_is_accepted_when_signed_in_only(
    controller: LocalController, admin: AccountSession
) -> None:
    """Over 1 MiB: 25,000 unknown members. Signed in it reaches validation (404 for the
    first unknown user); anonymous it is refused for its size before anything else."""
    members = [f"member-{i:06d}-{'x' * 30}" for i in range(25_000)]
    body = json.dumps({"name": f"big-{uuid.uuid4().hex[:6]}", "members": members}).encode()
    assert len(body) > MIB
    signed_in = send(controller, "POST", "/v1/groups", body, token=admin.token)
    assert signed_in.status_code == 404 and "no user named" in detail_of(signed_in)
    anonymous = send(controller, "POST", "/v1/groups", body)
    assert anonymous.status_code == 413


def test_a_credential_that_is_not_valid_buys_no_larger_body(
    controller: LocalController, admin: AccountSession, user: AccountSession
) -> None:
    """FastAPI reads a body before it checks who is calling, so the larger limit
    must depend on a valid credential of the right kind, not on the header alone."""
    members = [f"member-{i:06d}-{'x' * 30}" for i in range(25_000)]
    body = json.dumps({"name": f"big-{uuid.uuid4().hex[:6]}", "members": members}).encode()
    assert len(body) > MIB
    for token in ("zgt_" + "A" * 43, "zgd_" + "A" * 43, "junk", user.token):
        r = send(controller, "POST", "/v1/groups", body, token=token)
        assert r.status_code == 413, (token[:4], r.status_code)
    # An admin's credential on the report endpoint is not a device's either.
    report = b'{"version": "1", "interface": "zg0", "peers": [' + b"{}," * 400_000 + b"{}]}"
    assert len(report) > MIB
    assert send(controller, "POST", "/v1/report", report, token=admin.token).status_code == 413


# ----------------------------------------------------------------- defect 16: the OpenAPI document


@pytest.fixture(scope="module")
def openapi(controller: LocalController) -> dict[str, Any]:
    r = raw(controller, "GET", "/openapi.json")
    assert r.status_code == 200
    doc: dict[str, Any] = r.json()
    return doc


def responses(doc: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    documented: dict[str, Any] = doc["paths"][path][method.lower()]["responses"]
    return documented


def test_every_error_is_documented_as_the_one_problem_shape(openapi: dict[str, Any]) -> None:
    schemas = openapi["components"]["schemas"]
    assert "HTTPValidationError" not in schemas and "ValidationError" not in schemas
    assert schemas["Problem"]["properties"] == {"detail": {"type": "string"}}
    for path, operations in openapi["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if int(status) >= 400:
                    ref = response["content"]["application/json"]["schema"]["$ref"]
                    assert ref == "#/components/schemas/Problem", (method, path, status)
            assert {"400", "413"} <= set(operation["responses"]), (method, path)


@pytest.mark.parametrize(
    ("method", "path", "statuses"),
    [
        ("POST", "/v1/auth/login", {"401", "403", "422", "429"}),
        ("POST", "/v1/enroll", {"401", "403", "404", "409", "422", "429"}),
        ("GET", "/v1/groups", {"401", "403"}),
        ("DELETE", "/v1/provisioning-keys/{key_id}", {"401", "403", "404", "409", "422"}),
        ("POST", "/v1/report", {"401", "403", "404", "422"}),
        ("GET", "/v1/snapshot", {"204", "401", "404", "422"}),
    ],
)
def test_operations_document_the_statuses_they_return(
    openapi: dict[str, Any], method: str, path: str, statuses: set[str]
) -> None:
    assert statuses <= set(responses(openapi, method, path))


def test_public_reads_document_no_credential_errors(openapi: dict[str, Any]) -> None:
    for path in ("/v1/ca", "/v1/health"):
        assert not {"401", "403"} & set(responses(openapi, "GET", path))
        assert "security" not in openapi["paths"][path]["get"]
    assert openapi["paths"]["/v1/groups"]["get"]["security"] == [{"bearer": []}]


def test_ca_content_type_matches_the_document(controller: LocalController, openapi: dict[str, Any]) -> None:
    documented = responses(openapi, "GET", "/v1/ca")["200"]["content"]
    r = raw(controller, "GET", "/v1/ca")
    assert set(documented) == {"application/x-pem-file"}
    assert r.headers["content-type"].split(";")[0] == "application/x-pem-file"
    assert r.text.startswith("-----BEGIN CERTIFICATE-----")


def test_real_refusals_have_documented_statuses(
    controller: LocalController, admin: AccountSession, user: AccountSession, openapi: dict[str, Any]
) -> None:
    """What the controller really answers, checked against the document."""
    cases = [
        ("GET", "/v1/groups", "/v1/groups", None, None),
        ("GET", "/v1/groups", "/v1/groups", None, user.token),
        ("GET", "/v1/groups/{name}", "/v1/groups/nope", None, admin.token),
        ("POST", "/v1/groups", "/v1/groups", {"name": "dup"}, admin.token),
        ("POST", "/v1/groups", "/v1/groups", {"name": "dup"}, admin.token),
        ("POST", "/v1/groups", "/v1/groups", {"name": 5}, admin.token),
        (
            "POST",
            "/v1/auth/login",
            "/v1/auth/login",
            {"username": "a", "password": "b", "totp": "123456"},
            None,
        ),
        ("DELETE", "/v1/tokens/{token_id}", f"/v1/tokens/{TOO_BIG}", None, admin.token),
    ]
    seen = set()
    for method, template, path, body, token in cases:
        r = raw(controller, method, path, body, token=token)
        seen.add(r.status_code)
        assert str(r.status_code) in responses(openapi, method, template), (method, path, r.status_code)
        if r.status_code >= 400:
            detail_of(r)
    assert {401, 403, 404, 409, 422} <= seen
