"""Measurements of the path to the controller: DNS, TCP, pinned TLS and the key preflight call.

Each probe does its I/O with a bound on the time it takes and returns a small
frozen outcome record instead of raising, so the pure checks in
:mod:`zerogate.deploy.checks` can turn any outcome into a report line (and
tests can feed them outcomes without a network). The TLS steps are callables
that :func:`timed_tls` runs and times: :func:`fetch_pinned` for a host that
knows only the CA pin (an install string), :func:`check_with_ca` for an
enrolled host whose stored CA must verify the controller.
"""

from __future__ import annotations

import errno
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from zerogate.deploy.proxyenv import is_ip_literal
from zerogate.netops.controller_api import ControllerClient, ControllerError, fetch_ca
from zerogate.pki.ca import PKIError

__all__ = [
    "DNS_TIMEOUT",
    "PREFLIGHT_PATH",
    "TCP_TIMEOUT",
    "TLS_TIMEOUT",
    "KeyOutcome",
    "Resolution",
    "TcpOutcome",
    "TlsOutcome",
    "check_with_ca",
    "fetch_pinned",
    "preflight_key",
    "resolve",
    "tcp_connect",
    "timed_tls",
    "to_ms",
]

DNS_TIMEOUT = 5.0
TCP_TIMEOUT = 5.0
TLS_TIMEOUT = 10.0
PREFLIGHT_PATH = "/v1/enroll/preflight"


def to_ms(seconds: float) -> float:
    """A duration in milliseconds, rounded for reports."""
    return round(seconds * 1000.0, 2)


@dataclass(frozen=True)
class Resolution:
    host: str
    addresses: tuple[str, ...] = ()
    error: str | None = None
    latency_ms: float | None = None
    literal: bool = False

    @property
    def ok(self) -> bool:
        return bool(self.addresses)


def resolve(host: str, port: int, timeout: float = DNS_TIMEOUT) -> Resolution:
    """Resolve ``host`` with the system resolver, giving up after ``timeout`` seconds."""
    if is_ip_literal(host.strip("[]")):
        return Resolution(host, (host.strip("[]"),), literal=True)
    box: list[list[str] | BaseException] = []

    def lookup() -> None:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            box.append(list(dict.fromkeys(str(info[4][0]) for info in infos)))
        except (OSError, UnicodeError) as exc:
            box.append(exc)

    start = time.monotonic()
    # getaddrinfo cannot be interrupted; a daemon thread lets us stop waiting for it.
    worker = threading.Thread(target=lookup, name="preflight-dns", daemon=True)
    worker.start()
    worker.join(timeout)
    elapsed = time.monotonic() - start
    if not box:
        return Resolution(host, error=f"no answer from the DNS server within {timeout:g} s")
    result = box[0]
    if isinstance(result, BaseException):
        reason = result.strerror if isinstance(result, OSError) and result.strerror else str(result)
        return Resolution(host, error=reason, latency_ms=to_ms(elapsed))
    return Resolution(host, tuple(result), latency_ms=to_ms(elapsed))


@dataclass(frozen=True)
class TcpOutcome:
    address: str
    port: int
    latency_ms: float | None = None
    kind: str = ""  # "" ok | refused | timeout | unreachable | dns | error
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.kind


def _tcp_error(address: str, port: int, exc: OSError) -> TcpOutcome:
    if isinstance(exc, socket.gaierror):
        return TcpOutcome(address, port, kind="dns", error=str(exc.strerror))
    if isinstance(exc, ConnectionRefusedError):
        return TcpOutcome(address, port, kind="refused", error="connection refused")
    if isinstance(exc, TimeoutError):
        return TcpOutcome(address, port, kind="timeout", error="timed out")
    if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL):
        return TcpOutcome(address, port, kind="unreachable", error=exc.strerror or str(exc))
    return TcpOutcome(address, port, kind="error", error=exc.strerror or str(exc))


def tcp_connect(addresses: Sequence[str], port: int, timeout: float = TCP_TIMEOUT) -> TcpOutcome:
    """Connect to the first address that accepts; report the last failure otherwise."""
    outcome = TcpOutcome("", port, kind="dns", error="no address to connect to")
    for address in addresses:
        start = time.monotonic()
        try:
            with socket.create_connection((address, port), timeout=timeout):
                return TcpOutcome(address, port, latency_ms=to_ms(time.monotonic() - start))
        except OSError as exc:
            outcome = _tcp_error(address, port, exc)
    return outcome


@dataclass(frozen=True)
class TlsOutcome:
    ca_pem: bytes | None = None
    latency_ms: float | None = None
    error: Exception | None = None


def timed_tls(step: Callable[[], bytes]) -> TlsOutcome:
    """Run one TLS step (which returns the verified CA) and time it."""
    start = time.monotonic()
    try:
        ca_pem = step()
    except (ControllerError, PKIError) as exc:
        return TlsOutcome(error=exc)
    return TlsOutcome(ca_pem, to_ms(time.monotonic() - start))


def fetch_pinned(url: str, pin: str) -> Callable[[], bytes]:
    """TLS step for a host that knows only the pin (install string)."""
    return lambda: fetch_ca(url, pin, timeout=TLS_TIMEOUT)


def check_with_ca(url: str, ca_pem: bytes) -> Callable[[], bytes]:
    """TLS step for an enrolled host: its stored CA must verify the controller."""

    def step() -> bytes:
        with ControllerClient(url, ca_pem, timeout=TLS_TIMEOUT) as client:
            client.get("/v1/health")
        return ca_pem

    return step


@dataclass(frozen=True)
class KeyOutcome:
    info: dict[str, Any] | None = None
    error: ControllerError | None = None


def preflight_key(url: str, ca_pem: bytes, key: str) -> KeyOutcome:
    """Ask the controller what a provisioning key would enroll, without using it up."""
    try:
        with ControllerClient(url, ca_pem, timeout=TLS_TIMEOUT) as client:
            answer = client.post(PREFLIGHT_PATH, {"key": key})
    except ControllerError as exc:
        return KeyOutcome(error=exc)
    if not isinstance(answer, dict):
        return KeyOutcome(error=ControllerError(f"{PREFLIGHT_PATH} returned an unexpected answer"))
    return KeyOutcome(info=answer)
