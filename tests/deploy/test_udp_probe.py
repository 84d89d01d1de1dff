"""The authenticated UDP probe against real responders on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from zerogate.netops.udp_probe import (
    MAGIC,
    REQUEST_SIZE,
    ProbeResponder,
    ProbeSetupError,
    _RateLimiter,
    build_request,
    build_response,
    parse_request,
    probe,
    probe_port_for,
    serve_probes,
)
from zerogate.pki.ca import create_ca, create_csr, generate_private_key, sign_device_csr


@dataclass(frozen=True)
class Identity:
    key: bytes
    cert: bytes


@dataclass(frozen=True)
class Deployment:
    ca_key: bytes
    ca_cert: bytes

    def device(self, name: str, role: str = "gateway", key: bytes | None = None) -> Identity:
        key = key or generate_private_key()
        cert, _ = sign_device_csr(
            self.ca_key, self.ca_cert, create_csr(key, name), common_name=name, role=role
        )
        return Identity(key, cert)


@pytest.fixture(scope="module")
def deployment() -> Deployment:
    return Deployment(*create_ca("probe test CA"))


@pytest.fixture(scope="module")
def gateway(deployment: Deployment) -> Identity:
    return deployment.device("gw-probe")


class LoopThread:
    """An asyncio loop in a background thread, so the synchronous client can run in the test."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=10)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    try:
        yield lt
    finally:
        lt.close()


@contextmanager
def responder_on(
    lt: LoopThread, factory: Callable[[], asyncio.DatagramProtocol]
) -> Iterator[tuple[int, asyncio.DatagramProtocol]]:
    async def start() -> tuple[asyncio.DatagramTransport, asyncio.DatagramProtocol]:
        return await asyncio.get_running_loop().create_datagram_endpoint(factory, local_addr=("127.0.0.1", 0))

    transport, protocol = lt.run(start())
    try:
        yield transport.get_extra_info("sockname")[1], protocol
    finally:
        lt.loop.call_soon_threadsafe(transport.close)


def raw_exchange(port: int, payload: bytes, wait: float = 0.3) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("127.0.0.1", port))
        s.send(payload)
        s.settimeout(wait)
        try:
            return s.recv(65535)
        except TimeoutError:
            return None


# ---------------------------------------------------------------------------- wire format


def test_requests_are_padded_to_1200_bytes_and_anything_else_is_not_a_request() -> None:
    nonce = bytes(range(16))
    request = build_request(nonce)
    assert len(request) == REQUEST_SIZE == 1200 and request.startswith(MAGIC + nonce)
    assert parse_request(request) == nonce
    assert parse_request(request[:-1]) is None
    assert parse_request(request + b"\0") is None
    assert parse_request(b"XXXX" + request[4:]) is None
    with pytest.raises(ValueError, match="16 bytes"):
        build_request(b"short")
    assert probe_port_for(51820) == 51821


# ---------------------------------------------------------------------------- client against responders


def test_probe_verifies_a_real_gateway_answer(
    loop_thread: LoopThread, deployment: Deployment, gateway: Identity
) -> None:
    async def start() -> asyncio.DatagramTransport:
        return await serve_probes("127.0.0.1", 0, gateway.key, gateway.cert)

    transport = loop_thread.run(start())
    try:
        port = transport.get_extra_info("sockname")[1]
        result = probe("127.0.0.1", port, deployment.ca_cert, timeout=2.0, expected_name="gw-probe")
        assert result.ok, result.error
        assert result.gateway_name == "gw-probe" and result.error is None and result.kind == ""
        assert result.latency_ms is not None and 0 < result.latency_ms < 2000
        # Without an expected name any gateway of this deployment is accepted.
        assert probe("127.0.0.1", port, deployment.ca_cert).ok
    finally:
        loop_thread.loop.call_soon_threadsafe(transport.close)


def test_an_answer_is_smaller_than_the_request_so_there_is_no_amplification(
    loop_thread: LoopThread, gateway: Identity
) -> None:
    with responder_on(loop_thread, lambda: ProbeResponder(gateway.key, gateway.cert)) as (port, _):
        answer = raw_exchange(port, build_request(b"\x01" * 16))
    assert answer is not None and answer.startswith(MAGIC + b"\x01" * 16)
    assert len(answer) < REQUEST_SIZE


def test_a_gateway_of_another_deployment_is_rejected_with_a_clear_error(
    loop_thread: LoopThread, gateway: Identity
) -> None:
    _, other_ca = create_ca("someone else's CA")
    with responder_on(loop_thread, lambda: ProbeResponder(gateway.key, gateway.cert)) as (port, _):
        result = probe("127.0.0.1", port, other_ca, timeout=2.0)
    assert not result.ok and result.kind == "untrusted"
    assert result.error is not None and "not signed by this deployment's CA" in result.error
    assert "'gw-probe'" in result.error and "probe test CA" in result.error


def test_a_connector_certificate_or_the_wrong_gateway_does_not_pass(
    loop_thread: LoopThread, deployment: Deployment, gateway: Identity
) -> None:
    connector = deployment.device("conn-1", role="connector")
    with responder_on(loop_thread, lambda: ProbeResponder(connector.key, connector.cert)) as (port, _):
        result = probe("127.0.0.1", port, deployment.ca_cert)
    assert (result.ok, result.kind) == (False, "not-a-gateway")
    assert "connector certificate" in (result.error or "")

    with responder_on(loop_thread, lambda: ProbeResponder(gateway.key, gateway.cert)) as (port, _):
        result = probe("127.0.0.1", port, deployment.ca_cert, expected_name="gw-elsewhere")
    assert (result.ok, result.kind, result.gateway_name) == (False, "wrong-gateway", "gw-probe")
    assert "'gw-elsewhere' was expected" in (result.error or "")


class Impostor(asyncio.DatagramProtocol):
    """Replays the gateway's genuine certificate but cannot sign with its key."""

    def __init__(self, cert_pem: bytes) -> None:
        from cryptography import x509

        self.cert_der = x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.DER)
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        nonce = parse_request(data)
        assert nonce is not None and self.transport is not None
        forged = ed25519.Ed25519PrivateKey.generate().sign(MAGIC + nonce + b"zerogate-udp-probe")
        self.transport.sendto(build_response(nonce, self.cert_der, forged), addr)


def test_a_replayed_certificate_without_the_key_fails_the_signature_check(
    loop_thread: LoopThread, deployment: Deployment, gateway: Identity
) -> None:
    with responder_on(loop_thread, lambda: Impostor(gateway.cert)) as (port, _):
        result = probe("127.0.0.1", port, deployment.ca_cert)
    assert (result.ok, result.kind) == (False, "bad-signature")
    assert "signature does not verify" in (result.error or "")


def test_garbage_is_ignored_without_any_reply(loop_thread: LoopThread, gateway: Identity) -> None:
    good = build_request(b"\x02" * 16)
    garbage = [b"", b"ZGP1", b"\x00" * 1200, b"ZGP2" + good[4:], good[:-1], good + b"\x00", b"ZGP1" * 400]
    with responder_on(loop_thread, lambda: ProbeResponder(gateway.key, gateway.cert)) as (port, proto):
        for payload in garbage:
            assert raw_exchange(port, payload, wait=0.15) is None, payload[:8]
        assert raw_exchange(port, good) is not None  # still alive and answering
        assert isinstance(proto, ProbeResponder)
        assert (proto.ignored, proto.answered) == (len(garbage), 1)


def test_answers_are_rate_limited_per_source(loop_thread: LoopThread, gateway: Identity) -> None:
    def make() -> ProbeResponder:
        return ProbeResponder(gateway.key, gateway.cert, per_source_rate=0.01, per_source_burst=3)

    with responder_on(loop_thread, make) as (port, proto):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("127.0.0.1", port))
            for i in range(8):
                s.send(build_request(bytes([i]) * 16))
            s.settimeout(0.5)
            answers = []
            try:
                while True:
                    answers.append(s.recv(65535))
            except TimeoutError:
                pass
        assert len(answers) == 3
        assert isinstance(proto, ProbeResponder) and proto.rate_limited == 5


def test_rate_limiter_refills_and_bounds_its_table() -> None:
    now = [0.0]
    limiter = _RateLimiter(
        rate=1.0, burst=2, total_rate=100, total_burst=100, max_sources=2, clock=lambda: now[0]
    )
    assert [limiter.allow("a") for _ in range(3)] == [True, True, False]
    now[0] = 1.0
    assert limiter.allow("a") and not limiter.allow("a")
    assert limiter.allow("b")
    assert not limiter.allow("c")  # table full of recently active sources
    now[0] = 10.0  # a and b have refilled completely: their entries can go
    assert limiter.allow("c")
    total = _RateLimiter(rate=100, burst=100, total_rate=0.001, total_burst=2, clock=lambda: now[0])
    assert [total.allow(s) for s in ("x", "y", "z")] == [True, True, False]


class DropFirst(ProbeResponder):
    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.seen = getattr(self, "seen", 0) + 1
        if self.seen > 1:
            super().datagram_received(data, addr)


def test_a_lost_request_is_retransmitted(
    loop_thread: LoopThread, deployment: Deployment, gateway: Identity
) -> None:
    with responder_on(loop_thread, lambda: DropFirst(gateway.key, gateway.cert)) as (port, _):
        result = probe("127.0.0.1", port, deployment.ca_cert, timeout=1.5, attempts=3)
    assert result.ok, result.error
    assert result.latency_ms is not None and result.latency_ms >= 400  # the second send, 0.5 s in


def test_silence_times_out_and_a_closed_port_is_refused(deployment: Deployment) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        start = time.monotonic()
        result = probe("127.0.0.1", port, deployment.ca_cert, timeout=0.6)
        elapsed = time.monotonic() - start
        assert len(silent.recv(65535)) == REQUEST_SIZE  # it did arrive; nobody answered
    assert (result.ok, result.kind) == (False, "timeout")
    assert f"no answer from UDP 127.0.0.1:{port} within 0.6 s" in (result.error or "")
    assert 0.55 < elapsed < 1.5
    # Now nothing is bound to the port: the kernel answers with ICMP port unreachable.
    refused = probe("127.0.0.1", port, deployment.ca_cert, timeout=1.0)
    assert (refused.ok, refused.kind) == (False, "refused")
    assert "nothing listens on UDP" in (refused.error or "")


def test_unresolvable_names_and_bad_ca_are_reported(deployment: Deployment) -> None:
    # An empty label fails in the resolver's name encoding, before any query is sent.
    result = probe("gw..example", 1, deployment.ca_cert, timeout=0.5)
    assert (result.ok, result.kind) == (False, "dns")
    assert "cannot resolve 'gw..example'" in (result.error or "")
    bad = probe("127.0.0.1", 9, b"not a pem", timeout=0.5)
    assert (bad.ok, bad.kind) == (False, "bad-ca")


def test_ed25519_gateway_keys_work(loop_thread: LoopThread, deployment: Deployment) -> None:
    key = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    gw = deployment.device("gw-ed", key=key)
    with responder_on(loop_thread, lambda: ProbeResponder(gw.key, gw.cert)) as (port, _):
        result = probe("127.0.0.1", port, deployment.ca_cert, expected_name="gw-ed")
    assert result.ok, result.error


def test_a_responder_refuses_a_key_that_is_not_its_certificates(
    deployment: Deployment, gateway: Identity
) -> None:
    with pytest.raises(ProbeSetupError, match="does not belong to its certificate"):
        ProbeResponder(generate_private_key(), gateway.cert)
    with pytest.raises(ProbeSetupError, match="certificate PEM"):
        ProbeResponder(gateway.key, b"junk")
