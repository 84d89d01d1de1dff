"""Tests for the pinned controller client against real TLS servers on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import ssl
import tempfile
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from tlsserver import serve_tls
from zerogate.netops.controller_api import (
    ApiError,
    ControllerClient,
    ControllerError,
    ControllerUnreachable,
    ServerNameMismatch,
    TLSInterceptionSuspected,
    fetch_ca,
)
from zerogate.pki.ca import InvalidPin, ca_pin, create_ca, issue_server_certificate
from zerogate.pki.credentials import new_token


@dataclass(frozen=True)
class Authority:
    key: bytes
    cert: bytes


@dataclass
class Server:
    url: str
    ca: Authority
    seen_auth: list[str | None]


@pytest.fixture(scope="module")
def genuine_ca() -> Authority:
    return Authority(*create_ca("genuine controller CA"))


@pytest.fixture(scope="module")
def other_ca() -> Authority:
    return Authority(*create_ca("Corporate Inspection Root"))


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests talk to 127.0.0.1 only; a proxy from the developer's shell must not interfere.
    for name in (
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ):
        monkeypatch.delenv(name, raising=False)


def _handler(ca_pem: bytes | None, seen_auth: list[str | None]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(self, status: int, body: bytes, content_type: str, retry_after: str = "") -> None:
            self.send_response(status)
            if retry_after:
                self.send_header("Retry-After", retry_after)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, payload: Any) -> None:
            self._send(status, json.dumps(payload).encode(), "application/json")

        def do_GET(self) -> None:
            seen_auth.append(self.headers.get("Authorization"))
            if self.path == "/v1/ca" and ca_pem is not None:
                self._send(200, ca_pem, "application/x-pem-file")
            elif self.path.startswith("/v1/ping"):
                self._json(200, {"ok": True, "path": self.path})
            elif self.path == "/v1/validation":
                self._json(
                    422,
                    {
                        "detail": [
                            {"loc": ["body", "name"], "msg": "field required", "type": "missing"},
                            {
                                "loc": ["body", "subnets", 0],
                                "msg": "not a network",
                                "type": "value_error",
                            },
                        ]
                    },
                )
            elif self.path == "/v1/html":
                self._send(200, b"<html>proxy login</html>", "text/html")
            elif self.path == "/v1/plain-error":
                self._send(502, b"Bad gateway from upstream", "text/plain")
            elif self.path.startswith("/v1/busy?retry="):  # the test's own value, URL-encoded
                retry = urllib.parse.unquote(self.path.partition("=")[2])
                self._send(503, b'{"detail": "controller busy"}', "application/json", retry)
            else:
                self._json(404, {"detail": "connector not found"})

        def do_POST(self) -> None:
            seen_auth.append(self.headers.get("Authorization"))
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length) or b"null")
            if self.path == "/v1/echo":
                self._json(200, {"echo": body})
            else:
                self._json(404, {"detail": "no such endpoint"})

        def do_PUT(self) -> None:
            self.do_POST()

        def do_PATCH(self) -> None:
            self.do_POST()

        def do_DELETE(self) -> None:
            seen_auth.append(self.headers.get("Authorization"))
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()

    return Handler


def _serve(
    cert_issuer: Authority,
    served_ca_pem: bytes | None,
    names: list[str],
    tls_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3,
) -> Iterator[Server]:
    key_pem, cert_pem = issue_server_certificate(cert_issuer.key, cert_issuer.cert, names)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = tls_version
    context.maximum_version = tls_version
    with tempfile.TemporaryDirectory() as tmp:
        cert_file, key_file = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
        cert_file.write_bytes(cert_pem)
        key_file.write_bytes(key_pem)
        context.load_cert_chain(cert_file, key_file)
    seen_auth: list[str | None] = []
    with serve_tls(_handler(served_ca_pem, seen_auth), context) as url:
        yield Server(url, cert_issuer, seen_auth)


@pytest.fixture(scope="module")
def controller(genuine_ca: Authority) -> Iterator[Server]:
    yield from _serve(genuine_ca, genuine_ca.cert, ["127.0.0.1", "localhost"])


@pytest.fixture(scope="module")
def interceptor(genuine_ca: Authority, other_ca: Authority) -> Iterator[Server]:
    # A middlebox re-signs the connection with its own CA but relays the genuine body.
    yield from _serve(other_ca, genuine_ca.cert, ["127.0.0.1", "localhost"])


@pytest.fixture(scope="module")
def wrong_name(genuine_ca: Authority) -> Iterator[Server]:
    yield from _serve(genuine_ca, genuine_ca.cert, ["controller.example.test"])


@pytest.fixture
def tls12_only(genuine_ca: Authority) -> Iterator[Server]:
    yield from _serve(genuine_ca, genuine_ca.cert, ["127.0.0.1"], ssl.TLSVersion.TLSv1_2)


@pytest.fixture
def no_ca_endpoint(genuine_ca: Authority) -> Iterator[Server]:
    yield from _serve(genuine_ca, None, ["127.0.0.1"])


@pytest.fixture
def garbage_ca_endpoint(genuine_ca: Authority) -> Iterator[Server]:
    yield from _serve(genuine_ca, b"<html>not a certificate</html>", ["127.0.0.1"])


@pytest.fixture
def closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    sock.close()
    return port


# --------------------------------------------------------------------------- fetch_ca


def test_fetch_ca_happy_path(controller: Server, genuine_ca: Authority) -> None:
    pem = fetch_ca(controller.url, ca_pin(genuine_ca.cert), timeout=5)
    assert ca_pin(pem) == ca_pin(genuine_ca.cert)
    assert pem.startswith(b"-----BEGIN CERTIFICATE-----")


def test_fetch_ca_accepts_localhost_name(controller: Server, genuine_ca: Authority) -> None:
    url = controller.url.replace("127.0.0.1", "localhost")
    assert fetch_ca(url + "/", ca_pin(genuine_ca.cert), timeout=5)


def test_fetch_ca_wrong_pin(controller: Server, genuine_ca: Authority) -> None:
    wrong = ca_pin(create_ca("someone else")[1])
    with pytest.raises(TLSInterceptionSuspected) as info:
        fetch_ca(controller.url, wrong, timeout=5)
    message = str(info.value)
    assert f"the controller at {controller.url} presented a certificate chain" in message
    assert f"does not match the pinned CA {wrong}" in message
    assert f"saw {ca_pin(genuine_ca.cert)}" in message
    assert "exempt 127.0.0.1 from TLS inspection" in message
    assert info.value.seen_pin == ca_pin(genuine_ca.cert)


def test_fetch_ca_detects_interceptor_relaying_genuine_ca(interceptor: Server, genuine_ca: Authority) -> None:
    pin = ca_pin(genuine_ca.cert)
    with pytest.raises(TLSInterceptionSuspected) as info:
        fetch_ca(interceptor.url, pin, timeout=5)
    message = str(info.value)
    assert f"pinned CA {pin}" in message
    assert "TLS-intercepting proxy" in message
    assert "Corporate Inspection Root" in message  # names who issued the presented cert
    # The /v1/ca body passed the pin check; the verifying request caught it.
    assert isinstance(info.value.__cause__, TLSInterceptionSuspected)


def test_fetch_ca_closed_port(closed_port: int, genuine_ca: Authority) -> None:
    url = f"https://127.0.0.1:{closed_port}"
    with pytest.raises(ControllerUnreachable) as info:
        fetch_ca(url, ca_pin(genuine_ca.cert), timeout=5)
    assert url in str(info.value)
    assert "controller is running" in str(info.value)


def test_fetch_ca_bad_pin_format(controller: Server) -> None:
    with pytest.raises(InvalidPin):
        fetch_ca(controller.url, "md5/xyz")


def test_fetch_ca_rejects_non_https(genuine_ca: Authority) -> None:
    with pytest.raises(ControllerError, match="https://"):
        fetch_ca("http://127.0.0.1:1", ca_pin(genuine_ca.cert))


def test_fetch_ca_missing_endpoint(no_ca_endpoint: Server, genuine_ca: Authority) -> None:
    with pytest.raises(ApiError) as info:
        fetch_ca(no_ca_endpoint.url, ca_pin(genuine_ca.cert), timeout=5)
    assert info.value.status == 404


def test_fetch_ca_body_not_a_certificate(garbage_ca_endpoint: Server, genuine_ca: Authority) -> None:
    with pytest.raises(ControllerError, match="did not return a CA certificate"):
        fetch_ca(garbage_ca_endpoint.url, ca_pin(genuine_ca.cert), timeout=5)


def test_fetch_ca_tls12_middlebox(tls12_only: Server, genuine_ca: Authority) -> None:
    with pytest.raises(TLSInterceptionSuspected, match="TLS handshake failed"):
        fetch_ca(tls12_only.url, ca_pin(genuine_ca.cert), timeout=5)


def test_proxy_from_environment_is_used(
    controller: Server, genuine_ca: Authority, closed_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The controller is up, so failing here proves the (dead) proxy was used.
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{closed_port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with ControllerClient(controller.url, genuine_ca.cert, timeout=5) as client:
        with pytest.raises(ControllerUnreachable, match="HTTPS_PROXY"):
            client.get("/v1/ping")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with ControllerClient(controller.url, genuine_ca.cert, timeout=5) as client:
        assert client.get("/v1/ping")["ok"] is True


# --------------------------------------------------------------------------- client


def test_client_json_verbs_and_token(controller: Server, genuine_ca: Authority) -> None:
    token = new_token("zgt")
    with ControllerClient(controller.url, genuine_ca.cert, token=token, timeout=5) as client:
        assert client.get("/v1/ping", params={"a": "1"}) == {"ok": True, "path": "/v1/ping?a=1"}
        assert client.post("/v1/echo", json={"x": [1, 2]}) == {"echo": {"x": [1, 2]}}
        assert client.put("/v1/echo", json="y") == {"echo": "y"}
        assert client.patch("/v1/echo") == {"echo": None}
        assert client.delete("/v1/thing") is None
        client.set_token(None)
        client.get("/v1/ping")
    assert controller.seen_auth[-6:] == [f"Bearer {token}"] * 5 + [None]


def test_client_api_errors(controller: Server, genuine_ca: Authority) -> None:
    token = new_token("zgt")
    with ControllerClient(controller.url, genuine_ca.cert, token=token, timeout=5) as client:
        with pytest.raises(ApiError) as info:
            client.get("/v1/validation")
        assert info.value.status == 422
        assert info.value.message == "name: field required; subnets.0: not a network"
        assert str(info.value) == info.value.message
        assert isinstance(info.value.body, dict)

        with pytest.raises(ApiError) as info:
            client.get("/v1/missing")
        assert (info.value.status, str(info.value)) == (404, "connector not found")

        with pytest.raises(ApiError) as info:
            client.post("/v1/nope", json={})
        assert str(info.value) == "no such endpoint"

        with pytest.raises(ApiError) as info:
            client.get("/v1/plain-error")
        assert info.value.status == 502
        assert str(info.value) == "HTTP 502 Bad Gateway: Bad gateway from upstream"
        assert token not in repr(info.value.args)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("1", 1.0),
        ("120", 120.0),
        ("Wed, 21 Oct 2026 07:28:00 GMT", None),
        ("-1", None),
        ("1.5", None),
        ("9999999", None),
        ("", None),
    ],
)
def test_client_api_error_carries_retry_after_seconds(
    controller: Server, genuine_ca: Authority, header: str, seconds: float | None
) -> None:
    with ControllerClient(controller.url, genuine_ca.cert, timeout=5) as client:
        with pytest.raises(ApiError) as info:
            client.get(f"/v1/busy?retry={urllib.parse.quote(header)}")
    assert (info.value.status, info.value.message, info.value.retry_after) == (
        503,
        "controller busy",
        seconds,
    )


def test_client_non_json_success(controller: Server, genuine_ca: Authority) -> None:
    with ControllerClient(controller.url, genuine_ca.cert, timeout=5) as client:
        with pytest.raises(ControllerError, match="non-JSON content"):
            client.get("/v1/html")


def test_client_against_interceptor(interceptor: Server, genuine_ca: Authority) -> None:
    token = new_token("zgt")
    with ControllerClient(interceptor.url, genuine_ca.cert, token=token, timeout=5) as client:
        with pytest.raises(TLSInterceptionSuspected) as info:
            client.get("/v1/ping")
    message = str(info.value)
    assert f"pinned CA {ca_pin(genuine_ca.cert)}" in message
    assert "exempt 127.0.0.1 from TLS inspection" in message
    assert token not in message
    assert f"Bearer {token}" not in interceptor.seen_auth  # never reached the middlebox


def test_client_name_mismatch(wrong_name: Server, genuine_ca: Authority) -> None:
    with ControllerClient(wrong_name.url, genuine_ca.cert, timeout=5) as client:
        with pytest.raises(ServerNameMismatch, match=r"not for the name 127\.0\.0\.1"):
            client.get("/v1/ping")


def test_client_closed_port(closed_port: int, genuine_ca: Authority) -> None:
    token = new_token("zgt")
    url = f"https://127.0.0.1:{closed_port}"
    with ControllerClient(url, genuine_ca.cert, token=token, timeout=5) as client:
        with pytest.raises(ControllerUnreachable) as info:
            client.get("/v1/ping")
    assert url in str(info.value) and token not in str(info.value)


def test_client_timeout(genuine_ca: Authority) -> None:
    # A listener that accepts but never speaks TLS: the handshake times out.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"https://127.0.0.1:{listener.getsockname()[1]}"
        with ControllerClient(url, genuine_ca.cert, timeout=0.3) as client:
            with pytest.raises(ControllerUnreachable, match="timed out"):
                client.get("/v1/ping")


@pytest.fixture
def raw_listener() -> Iterator[tuple[str, list[bytes]]]:
    """A TCP listener whose behaviour the test chooses: it answers each connection
    with the next canned reply (then closes)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    replies: list[bytes] = []

    def run() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(4096)
                if replies:
                    conn.sendall(replies.pop(0))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{listener.getsockname()[1]}", replies
    listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
    listener.close()
    thread.join(timeout=5)


def test_client_plain_http_port(raw_listener: tuple[str, list[bytes]], genuine_ca: Authority) -> None:
    url, replies = raw_listener
    replies.append(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    with ControllerClient(url, genuine_ca.cert, timeout=5) as client:
        with pytest.raises(ControllerUnreachable, match="does not speak TLS"):
            client.get("/v1/ping")


def test_client_connection_dropped_in_handshake(
    raw_listener: tuple[str, list[bytes]], genuine_ca: Authority
) -> None:
    url, _ = raw_listener
    with ControllerClient(url, genuine_ca.cert, timeout=5) as client:
        with pytest.raises(ControllerUnreachable, match="closed during the TLS handshake"):
            client.get("/v1/ping")


def test_client_requires_tls13(genuine_ca: Authority) -> None:
    with ControllerClient("https://127.0.0.1:1", genuine_ca.cert) as client:
        context = client._http._transport._pool._ssl_context  # type: ignore[attr-defined]
    assert context.minimum_version == ssl.TLSVersion.TLSv1_3
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    assert len(context.get_ca_certs()) == 1


def test_client_rejects_bad_configuration(genuine_ca: Authority) -> None:
    with pytest.raises(ControllerError, match="https://"):
        ControllerClient("http://127.0.0.1:1", genuine_ca.cert)
    with pytest.raises(ControllerError, match="CA certificate"):
        ControllerClient("https://127.0.0.1:1", b"not a pem")


def test_error_tree() -> None:
    for cls in (ControllerUnreachable, TLSInterceptionSuspected, ServerNameMismatch, ApiError):
        assert issubclass(cls, ControllerError)
