"""Authenticated UDP probe: "is this gateway reachable over UDP, and is it really ours?"

A gateway answers probes on UDP ``port_first + 1`` of its range (WireGuard
itself listens on ``port_first``). Reaching a UDP port proves little on its
own (a NAT or load balancer may answer for anything), so the answer is signed
with the gateway's device key and carries its certificate; the client checks
that the certificate chains to the deployment CA, belongs to a *gateway*, and
signed the client's fresh nonce.

Wire format (big-endian lengths)::

    request  = MAGIC | nonce(16) | zero padding            exactly REQUEST_SIZE bytes
    response = MAGIC | nonce(16) | u16 len | certificate (DER)
                                 | u16 len | signature over MAGIC | nonce | SIGNED_CONTEXT

Amplification: the request must be padded to 1,200 bytes (as QUIC does for its
first packet) and a response is always smaller (a P-256 certificate and
signature come to about 700 bytes; :class:`ProbeResponder` refuses to start
with a certificate that would make it larger), so a spoofed source gains
nothing. Signing still costs CPU, so answers are also rate-limited per source
address (5 per second, bursts of 10) and in total (500 per second); requests
over the limit are silently dropped.

Errors: :class:`ProbeSetupError` (``ValueError``) when a responder cannot be
built from the given key and certificate. The client :func:`probe` never
raises for network or peer problems; it returns a :class:`ProbeResult` whose
``error`` says what happened and ``kind`` classifies it.

Size: about 500 lines, kept whole on purpose: the wire format, the signing
responder and the verifying client are one protocol, reviewed together.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import errno
import logging
import secrets
import socket
import struct
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import NameOID

__all__ = [
    "MAGIC",
    "PROBE_PORT_OFFSET",
    "REQUEST_SIZE",
    "ProbeResponder",
    "ProbeResult",
    "ProbeSetupError",
    "build_request",
    "parse_request",
    "probe",
    "probe_port_for",
    "serve_probes",
]

log = logging.getLogger(__name__)

MAGIC = b"ZGP1"
NONCE_SIZE = 16
REQUEST_SIZE = 1200
SIGNED_CONTEXT = b"zerogate-udp-probe"
PROBE_PORT_OFFSET = 1
GATEWAY_ROLE = "gateway"

_LEN = struct.Struct("!H")
_MAX_DATAGRAM = 65535

_PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey


class ProbeSetupError(ValueError):
    """The responder's key or certificate cannot be used for probe answers."""


def probe_port_for(port_first: int) -> int:
    """The UDP port a gateway answers probes on, given the first port of its range."""
    return port_first + PROBE_PORT_OFFSET


# --------------------------------------------------------------------------- wire format (pure)


def build_request(nonce: bytes) -> bytes:
    """A padded probe request carrying ``nonce``."""
    if len(nonce) != NONCE_SIZE:
        raise ValueError(f"nonce must be {NONCE_SIZE} bytes, got {len(nonce)}")
    head = MAGIC + nonce
    return head + bytes(REQUEST_SIZE - len(head))


def parse_request(data: bytes) -> bytes | None:
    """The nonce of a well-formed request, or None for anything else."""
    if len(data) != REQUEST_SIZE or not data.startswith(MAGIC):
        return None
    return data[len(MAGIC) : len(MAGIC) + NONCE_SIZE]


def _signed_message(nonce: bytes) -> bytes:
    return MAGIC + nonce + SIGNED_CONTEXT


def _sign(key: _PrivateKey, message: bytes) -> bytes:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(message, ec.ECDSA(hashes.SHA256()))
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(message)
    return key.sign(message, padding.PKCS1v15(), hashes.SHA256())


def build_response(nonce: bytes, cert_der: bytes, signature: bytes) -> bytes:
    return MAGIC + nonce + _LEN.pack(len(cert_der)) + cert_der + _LEN.pack(len(signature)) + signature


@dataclass(frozen=True)
class _Response:
    nonce: bytes
    cert_der: bytes
    signature: bytes


def _parse_response(data: bytes) -> _Response | None:
    """Split a response into its fields; None if it is not a well-formed one."""
    head = len(MAGIC) + NONCE_SIZE
    if len(data) < head + 2 * _LEN.size or not data.startswith(MAGIC):
        return None
    nonce = data[len(MAGIC) : head]
    (cert_len,) = _LEN.unpack_from(data, head)
    cert_end = head + _LEN.size + cert_len
    if cert_end + _LEN.size > len(data):
        return None
    (sig_len,) = _LEN.unpack_from(data, cert_end)
    sig_start = cert_end + _LEN.size
    if sig_start + sig_len != len(data):
        return None
    return _Response(nonce, data[head + _LEN.size : cert_end], data[sig_start:])


# --------------------------------------------------------------------------- responder


class _RateLimiter:
    """Token buckets per source address plus one shared bucket.

    The per-source table is bounded: when full, idle entries are dropped, and
    if every entry is busy a new source is refused until one frees up.
    """

    def __init__(
        self,
        rate: float,
        burst: float,
        total_rate: float,
        total_burst: float,
        max_sources: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate, self.burst = rate, burst
        self.total_rate, self.total_burst = total_rate, total_burst
        self.max_sources = max_sources
        self.clock = clock
        self._sources: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._total = (total_burst, clock())

    @staticmethod
    def _refill(tokens: float, last: float, now: float, rate: float, burst: float) -> float:
        return min(burst, tokens + (now - last) * rate)

    def allow(self, source: str) -> bool:
        now = self.clock()
        total = self._refill(*self._total, now, self.total_rate, self.total_burst)
        entry = self._sources.pop(source, None)
        if entry is None:
            if len(self._sources) >= self.max_sources:
                self._evict_idle(now)
                if len(self._sources) >= self.max_sources:
                    self._total = (total, now)
                    return False
            tokens = self.burst
        else:
            tokens = self._refill(*entry, now, self.rate, self.burst)
        allowed = tokens >= 1.0 and total >= 1.0
        if allowed:
            tokens -= 1.0
            total -= 1.0
        self._sources[source] = (tokens, now)  # most recently seen last
        self._total = (total, now)
        return allowed

    def _evict_idle(self, now: float) -> None:
        # A bucket that has refilled completely carries no information.
        full_after = self.burst / self.rate if self.rate > 0 else float("inf")
        while self._sources:
            source, (_, last) = next(iter(self._sources.items()))
            if now - last < full_after:
                break
            del self._sources[source]


def _load_key_and_cert(key_pem: bytes, cert_pem: bytes) -> tuple[_PrivateKey, bytes]:
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ProbeSetupError(f"cannot read the gateway's private key PEM: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey):
        raise ProbeSetupError(f"unsupported key type for probe answers: {type(key).__name__}")
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise ProbeSetupError(f"cannot read the gateway's certificate PEM: {exc}") from exc
    if cert.public_key() != key.public_key():
        raise ProbeSetupError("the gateway's private key does not belong to its certificate")
    return key, cert.public_bytes(serialization.Encoding.DER)


class ProbeResponder(asyncio.DatagramProtocol):
    """Answers well-formed probe requests with a signed proof of identity.

    Everything else (short, long or malformed datagrams) is ignored without a
    reply. ``answered``, ``ignored`` and ``rate_limited`` count what happened.
    """

    def __init__(
        self,
        key_pem: bytes,
        cert_pem: bytes,
        *,
        per_source_rate: float = 5.0,
        per_source_burst: float = 10.0,
        total_rate: float = 500.0,
        total_burst: float = 1000.0,
    ) -> None:
        self._key, self._cert_der = _load_key_and_cert(key_pem, cert_pem)
        largest = len(build_response(bytes(NONCE_SIZE), self._cert_der, self._max_signature()))
        if largest >= REQUEST_SIZE:
            raise ProbeSetupError(
                f"the gateway certificate is too large for probe answers ({largest} bytes, the "
                f"limit is {REQUEST_SIZE - 1}); use an EC P-256 or Ed25519 device key"
            )
        self._limiter = _RateLimiter(per_source_rate, per_source_burst, total_rate, total_burst)
        self._transport: asyncio.DatagramTransport | None = None
        self.answered = 0
        self.ignored = 0
        self.rate_limited = 0

    def _max_signature(self) -> bytes:
        if isinstance(self._key, ec.EllipticCurvePrivateKey):
            # DER-encoded ECDSA: two integers of at most key_size+8 bits, plus headers.
            return bytes(2 * (self._key.key_size // 8 + 1) + 9)
        return _sign(self._key, b"size")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # CPython's datagram transport does not subclass DatagramTransport, hence the cast.
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        nonce = parse_request(data)
        if nonce is None:
            self.ignored += 1
            return
        if not self._limiter.allow(str(addr[0])):
            self.rate_limited += 1
            return
        signature = _sign(self._key, _signed_message(nonce))
        if self._transport is not None:
            self.answered += 1
            self._transport.sendto(build_response(nonce, self._cert_der, signature), addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors for earlier answers (the prober went away): nothing to do.
        log.debug("probe responder: %s", exc, extra={"component": "udp_probe"})


async def serve_probes(host: str, port: int, key_pem: bytes, cert_pem: bytes) -> asyncio.DatagramTransport:
    """Answer probes on ``host:port`` until the returned transport is closed.

    Raises :class:`ProbeSetupError` for an unusable key/certificate and
    ``OSError`` if the port cannot be bound.
    """
    loop = asyncio.get_running_loop()
    responder = ProbeResponder(key_pem, cert_pem)
    transport, _ = await loop.create_datagram_endpoint(lambda: responder, local_addr=(host, port))
    return transport


# --------------------------------------------------------------------------- client


@dataclass(frozen=True)
class ProbeResult:
    """Outcome of one probe.

    ``kind`` is "" on success, else one of: ``dns``, ``unreachable``,
    ``refused``, ``timeout``, ``bad-ca``, ``bad-response``, ``untrusted``,
    ``expired``, ``not-a-gateway``, ``wrong-gateway``, ``bad-signature``.
    """

    ok: bool
    latency_ms: float | None
    gateway_name: str | None
    error: str | None
    kind: str = ""


class _Rejected(Exception):
    def __init__(self, kind: str, message: str, name: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.name = name


def _common_name(name: x509.Name) -> str | None:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not attrs:
        return None
    value = attrs[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def _role(cert: x509.Certificate) -> str | None:
    attrs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    if not attrs:
        return None
    value = attrs[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def _verify_signature(cert: x509.Certificate, signature: bytes, message: bytes) -> bool:
    public = cert.public_key()
    try:
        if isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        elif isinstance(public, ed25519.Ed25519PublicKey):
            public.verify(signature, message)
        elif isinstance(public, rsa.RSAPublicKey):
            public.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
        else:
            return False
    except InvalidSignature:
        return False
    return True


def _verify_response(
    response: _Response,
    ca: x509.Certificate,
    expected_name: str | None,
    now: dt.datetime,
) -> str:
    """Check a response that carries our nonce; return the gateway's name or raise _Rejected."""
    try:
        cert = x509.load_der_x509_certificate(response.cert_der)
    except ValueError as exc:
        raise _Rejected("bad-response", "the answer carries an unreadable certificate") from exc
    name = _common_name(cert.subject) or "(no name)"
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        issuer = _common_name(cert.issuer) or cert.issuer.rfc4514_string()
        raise _Rejected(
            "untrusted",
            f"the answer's certificate ({name!r}, issued by {issuer!r}) is not signed by this "
            "deployment's CA: another service or a gateway of another deployment answers on this port",
            name,
        ) from exc
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise _Rejected(
            "expired",
            f"gateway {name!r} answered with a certificate valid only from "
            f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} to {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC "
            "(check this host's clock, or re-enroll the gateway)",
            name,
        )
    role = _role(cert)
    if role != GATEWAY_ROLE:
        raise _Rejected(
            "not-a-gateway",
            f"the answer is signed by a {role or 'unknown'} certificate ({name!r}), not a gateway's",
            name,
        )
    if expected_name is not None and name != expected_name:
        raise _Rejected(
            "wrong-gateway",
            f"gateway {name!r} answered, but {expected_name!r} was expected at this address: "
            "check the gateway's public endpoint and port forwarding",
            name,
        )
    if not _verify_signature(cert, response.signature, _signed_message(response.nonce)):
        raise _Rejected(
            "bad-signature",
            f"the answer claims to be gateway {name!r} but its signature does not verify "
            "(forged or damaged on the way)",
            name,
        )
    return name


def _socket_error(exc: OSError, where: str) -> ProbeResult:
    if isinstance(exc, ConnectionRefusedError) or exc.errno == errno.ECONNREFUSED:
        return ProbeResult(
            False,
            None,
            None,
            f"nothing listens on UDP {where} (ICMP port unreachable): the gateway daemon is not "
            "running there, or the port is forwarded to the wrong host",
            "refused",
        )
    if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        return ProbeResult(
            False,
            None,
            None,
            f"no route to {where} ({exc.strerror}): check this host's routes",
            "unreachable",
        )
    return ProbeResult(False, None, None, f"UDP to {where} failed: {exc.strerror or exc}", "unreachable")


def _where(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def probe(
    host: str,
    port: int,
    ca_pem: bytes,
    timeout: float = 2.0,
    *,
    expected_name: str | None = None,
    attempts: int = 3,
) -> ProbeResult:
    """Probe the gateway at ``host:port`` and verify its answer against ``ca_pem``.

    The request is sent up to ``attempts`` times, evenly spread over
    ``timeout`` seconds, to ride out a lost datagram; latency counts from the
    first send. Datagrams from other addresses are filtered by the kernel
    (connected socket), and answers to other nonces are ignored.
    """
    where = _where(host, port)
    try:
        ca = x509.load_pem_x509_certificate(ca_pem)
    except ValueError:
        return ProbeResult(
            False, None, None, "the CA certificate to check against is not usable PEM", "bad-ca"
        )
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
        return ProbeResult(False, None, None, f"cannot resolve {host!r}: {reason}", "dns")
    family, socktype, proto, _, address = infos[0]
    nonce = secrets.token_bytes(NONCE_SIZE)
    request = build_request(nonce)
    interval = timeout / max(1, attempts)
    with socket.socket(family, socktype, proto) as sock:
        try:
            sock.connect(address)
        except OSError as exc:
            return _socket_error(exc, where)
        start = time.monotonic()
        deadline = start + timeout
        next_send = start
        sent = 0
        while True:
            now = time.monotonic()
            if now >= deadline:
                return ProbeResult(
                    False,
                    None,
                    None,
                    f"no answer from UDP {where} within {timeout:g} s: UDP to the gateway is blocked "
                    "on the way (egress firewall, NAT) or the gateway is down",
                    "timeout",
                )
            if sent < attempts and now >= next_send:
                try:
                    sock.send(request)
                except OSError as exc:
                    return _socket_error(exc, where)
                sent += 1
                next_send = start + sent * interval
            wake = min(deadline, next_send) if sent < attempts else deadline
            sock.settimeout(max(0.001, wake - time.monotonic()))
            try:
                data = sock.recv(_MAX_DATAGRAM)
            except TimeoutError:
                continue
            except OSError as exc:
                return _socket_error(exc, where)
            latency_ms = (time.monotonic() - start) * 1000.0
            response = _parse_response(data)
            if response is None or response.nonce != nonce:
                continue  # stray or stale datagram: keep waiting for ours
            try:
                name = _verify_response(response, ca, expected_name, dt.datetime.now(dt.UTC))
            except _Rejected as exc:
                return ProbeResult(False, round(latency_ms, 2), exc.name, exc.message, exc.kind)
            return ProbeResult(True, round(latency_ms, 2), name, None)
