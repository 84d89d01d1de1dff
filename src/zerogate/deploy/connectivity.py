"""Can this host reach everything its role needs? Shared by preflight and connectivity-test.

Every check produces a :class:`Check`: pass / warn / fail / skip, a one-line
detail, and for anything not passing the fix. The module has three layers:

* measurements (I/O): :func:`resolve`, :func:`tcp_connect`, pinned TLS, the
  key preflight call and UDP probes, each returning a small outcome record;
* pure checks that turn an outcome into a :class:`Check` (``dns_check``,
  ``tcp_check``, ``tls_check``, ``key_check``, ``udp_check``), so tests can
  feed them facts;
* runners: :func:`check_install_string` (a host that is not enrolled yet)
  and :func:`check_enrolled` (an enrolled connector or gateway, from its
  state directory).

Proxies: HTTPS to the controller honours ``HTTPS_PROXY``/``ALL_PROXY``/
``NO_PROXY`` (lower-case spelling wins, as in Python and httpx); the TCP
check then tests the path to the proxy. UDP never goes through a proxy.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from zerogate.netops.controller_api import (
    ApiError,
    ControllerClient,
    ControllerError,
    ControllerUnreachable,
    ServerNameMismatch,
    TLSInterceptionSuspected,
    fetch_ca,
)
from zerogate.netops.udp_probe import ProbeResult, probe, probe_port_for
from zerogate.pki.ca import PKIError, pin_matches
from zerogate.pki.credentials import token_hint
from zerogate.pki.install_string import InvalidInstallString, parse_install_string

__all__ = [
    "Check",
    "GatewayTarget",
    "NetworkReport",
    "ProxyEnv",
    "Resolution",
    "TcpOutcome",
    "TlsOutcome",
    "check_enrolled",
    "check_install_string",
    "dns_check",
    "key_check",
    "proxy_for_https",
    "read_proxy_env",
    "redact_proxy",
    "tcp_check",
    "tls_check",
    "udp_check",
]

Status = Literal["pass", "warn", "fail", "skip"]

DNS_TIMEOUT = 5.0
TCP_TIMEOUT = 5.0
TLS_TIMEOUT = 10.0
UDP_TIMEOUT = 2.0
PREFLIGHT_PATH = "/v1/enroll/preflight"


@dataclass(frozen=True)
class Check:
    """One line of a preflight or connectivity report."""

    id: str
    title: str
    status: Status
    detail: str
    fix: str = ""
    endpoint: str = ""
    latency_ms: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "fix": self.fix or None,
            "endpoint": self.endpoint or None,
            "latency_ms": self.latency_ms,
        }


def any_failed(checks: Sequence[Check]) -> bool:
    return any(c.status == "fail" for c in checks)


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 2)


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------- proxy environment (pure)

PROXY_NAMES = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY")


@dataclass(frozen=True)
class ProxyEnv:
    """Effective proxy settings: for each name, the lower-case spelling wins if present."""

    values: dict[str, str]
    conflicts: tuple[str, ...] = ()

    def get(self, name: str) -> str:
        return self.values.get(name, "")

    @property
    def any_proxy(self) -> bool:
        return any(self.get(n) for n in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY"))


def read_proxy_env(env: Mapping[str, str]) -> ProxyEnv:
    values: dict[str, str] = {}
    conflicts: list[str] = []
    for name in PROXY_NAMES:
        lower, upper = env.get(name.lower()), env.get(name)
        if lower is not None and upper is not None and lower.strip() != upper.strip():
            conflicts.append(name)
        value = lower if lower is not None else upper
        if value and value.strip():
            values[name] = value.strip()
    return ProxyEnv(values, tuple(conflicts))


def bypasses_proxy(host: str, no_proxy: str) -> bool:
    """True if ``host`` matches a NO_PROXY entry (``*``, a domain suffix, an IP or a CIDR)."""
    host = host.strip("[]").lower().rstrip(".")
    for raw in no_proxy.split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        if "://" in entry:
            entry = entry.split("://", 1)[1]
        entry = entry.strip("[]")
        if entry.count(":") == 1:  # host:port; the port does not matter here
            entry = entry.split(":", 1)[0]
        if "/" in entry and _is_ip(host):
            try:
                if ipaddress.ip_address(host) in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                pass
            continue
        entry = entry.lstrip("*").lstrip(".").rstrip(".")
        if entry and (host == entry or host.endswith("." + entry)):
            return True
    return False


def redact_proxy(proxy: str) -> str:
    """The proxy URL with any user name and password replaced by ``***``."""
    parts = urlsplit(proxy if "://" in proxy else "http://" + proxy)
    if not (parts.username or parts.password):
        return proxy
    netloc = f"***@{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc)) if "://" in proxy else netloc


def proxy_for_https(host: str, proxies: ProxyEnv) -> str | None:
    """The proxy HTTPS to ``host`` goes through, or None for a direct connection."""
    proxy = proxies.get("HTTPS_PROXY") or proxies.get("ALL_PROXY")
    if not proxy or bypasses_proxy(host, proxies.get("NO_PROXY")):
        return None
    return proxy


def _proxy_address(proxy: str) -> tuple[str, int] | None:
    parts = urlsplit(proxy if "://" in proxy else "http://" + proxy)
    try:
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname:
        return None
    default = 443 if parts.scheme == "https" else 1080 if parts.scheme.startswith("socks") else 80
    return parts.hostname, port or default


# --------------------------------------------------------------------------- measurements (I/O)


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
    if _is_ip(host.strip("[]")):
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
        return Resolution(host, error=reason, latency_ms=_ms(elapsed))
    return Resolution(host, tuple(result), latency_ms=_ms(elapsed))


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
                return TcpOutcome(address, port, latency_ms=_ms(time.monotonic() - start))
        except OSError as exc:
            outcome = _tcp_error(address, port, exc)
    return outcome


@dataclass(frozen=True)
class TlsOutcome:
    ca_pem: bytes | None = None
    latency_ms: float | None = None
    error: Exception | None = None


def _timed_tls(step: Callable[[], bytes]) -> TlsOutcome:
    start = time.monotonic()
    try:
        ca_pem = step()
    except (ControllerError, PKIError) as exc:
        return TlsOutcome(error=exc)
    return TlsOutcome(ca_pem, _ms(time.monotonic() - start))


@dataclass(frozen=True)
class KeyOutcome:
    info: dict[str, Any] | None = None
    error: ControllerError | None = None


# --------------------------------------------------------------------------- pure checks


def dns_check(res: Resolution, proxy: str | None = None) -> Check:
    title = "DNS resolution of the controller"
    if res.literal:
        return Check("dns", title, "pass", f"{res.host} is an IP address: no DNS lookup needed")
    if res.ok:
        shown = ", ".join(res.addresses[:4]) + (" …" if len(res.addresses) > 4 else "")
        return Check("dns", title, "pass", f"{res.host} → {shown}", latency_ms=res.latency_ms)
    detail = f"cannot resolve {res.host}: {res.error}"
    if proxy:
        return Check(
            "dns",
            title,
            "warn",
            f"{detail}; HTTPS goes through the proxy {redact_proxy(proxy)}, which resolves it",
            fix=f"make {res.host} resolvable here too if the gateways' endpoints are names",
        )
    return Check(
        "dns",
        title,
        "fail",
        detail,
        fix=(
            f"check that /etc/resolv.conf names a DNS server this host can reach and that {res.host} "
            "exists in DNS (or add it to /etc/hosts)"
        ),
    )


def tcp_check(host: str, port: int, res: Resolution, outcome: TcpOutcome | None, proxy: str | None) -> Check:
    """TCP to the controller (or to the proxy that carries HTTPS to it)."""
    via = f" via the proxy {redact_proxy(proxy)}" if proxy else ""
    title = f"TCP {port} to the controller{via}"
    endpoint = _hostport(host, port)
    if outcome is None:
        return Check(
            "tcp",
            title,
            "fail",
            f"not attempted: {host} does not resolve (see the DNS check)",
            fix="fix DNS resolution of the controller first",
            endpoint=endpoint,
        )
    target = _hostport(outcome.address or host, outcome.port)
    if outcome.ok:
        return Check(
            "tcp",
            title,
            "pass",
            f"connected to {target}{via}",
            endpoint=endpoint,
            latency_ms=outcome.latency_ms,
        )
    what = f"the proxy {redact_proxy(proxy)}" if proxy else host
    fixes = {
        "refused": (
            f"connection refused by {target}: nothing listens there",
            f"check that {what} is up and listening on port {outcome.port}"
            + (" (HTTPS_PROXY)" if proxy else " and that the install string's address is right"),
        ),
        "timeout": (
            f"no answer from {target} within {TCP_TIMEOUT:g} s: a firewall drops the traffic",
            f"allow outbound TCP {outcome.port} from this host to {what} ({outcome.address or host})",
        ),
        "unreachable": (
            f"no route to {target} ({outcome.error})",
            f"give this host a route to {what} (a default gateway) or allow it in the egress firewall",
        ),
        "dns": (
            f"cannot resolve {outcome.address or what}: {outcome.error}",
            f"fix DNS resolution of {what}",
        ),
    }
    detail, fix = fixes.get(
        outcome.kind, (f"cannot connect to {target}: {outcome.error}", f"check the network path to {what}")
    )
    return Check("tcp", title, "fail", detail, fix=fix, endpoint=endpoint)


def tls_check(url: str, pin: str, outcome: TlsOutcome) -> Check:
    """Pinned TLS to the controller; a pin mismatch means interception."""
    title = "TLS to the controller (pinned CA)"
    host = urlsplit(url).hostname or url
    if outcome.error is None:
        return Check(
            "tls",
            title,
            "pass",
            f"the controller's certificate chains to the pinned CA {pin}: no TLS interception",
            endpoint=url,
            latency_ms=outcome.latency_ms,
        )
    exc = outcome.error
    if isinstance(exc, TLSInterceptionSuspected):
        return Check(
            "tls",
            title,
            "fail",
            f"TLS interception suspected: {exc}",
            fix=(
                f"the controller's name {host} must bypass TLS inspection: add it to the SSL/TLS "
                "inspection exemptions of your proxy or firewall (zerogate pins its CA and will not "
                "talk through an intercepting middlebox)"
            ),
            endpoint=url,
        )
    if isinstance(exc, ServerNameMismatch):
        fix = "connect with a name the controller's certificate lists: ask the admin for a new install string"
    elif isinstance(exc, ControllerUnreachable):
        fix = "fix the TCP path above; if TCP works, the server on that port is not a TLS 1.3 server"
    elif isinstance(exc, ApiError):
        fix = "the URL does not lead to a zerogate controller: check the install string"
    elif isinstance(exc, PKIError):
        fix = "copy the whole install string again (its CA pin is damaged)"
    else:
        fix = "check that the install string's URL points at the zerogate controller"
    return Check("tls", title, "fail", str(exc), fix=fix, endpoint=url)


def key_check(role: str, outcome: KeyOutcome) -> Check:
    title = "provisioning key"
    new_string = "ask an admin for a new install string"
    if outcome.error is not None:
        exc = outcome.error
        # FastAPI's own "Not Found" means no such route; other 404s are the controller's answer.
        if isinstance(exc, ApiError) and (
            exc.status == 405 or (exc.status == 404 and exc.message == "Not Found")
        ):
            return Check(
                "key",
                title,
                "warn",
                "the controller does not offer the key preflight (older version): key and gateways not checked",
                fix="upgrade the controller, or enroll and run 'zerogate connectivity-test'",
            )
        if isinstance(exc, ApiError) and exc.status in (401, 403, 404, 422):
            return Check(
                "key", title, "fail", f"the controller refuses this key: {exc.message}", fix=new_string
            )
        return Check(
            "key", title, "fail", f"cannot check the key: {exc}", fix="fix the controller checks above"
        )
    info = outcome.info or {}
    enrolls = str(info.get("role", "?"))
    if enrolls != role:
        return Check(
            "key",
            title,
            "fail",
            f"this install string enrolls a {enrolls}, not a {role}",
            fix=f"run 'zerogate preflight --role {enrolls}', or {new_string} for a {role}",
        )
    target = (
        f"connector group {info.get('connector_group')}"
        if enrolls == "connector"
        else f"gateway {(info.get('gateway') or {}).get('name')}"
    )
    expires = str(info.get("expires_at", "?"))[:16].replace("T", " ")
    return Check(
        "key",
        title,
        "pass",
        f"valid: enrolls into {target}; {info.get('uses_left')} use(s) left; expires {expires} UTC",
    )


@dataclass(frozen=True)
class GatewayTarget:
    name: str
    endpoint: str
    probe_port: int
    port_first: int
    port_last: int | None = None

    @property
    def range_text(self) -> str:
        if self.port_last is None or self.port_last == self.port_first:
            return str(self.port_first)
        return f"{self.port_first}-{self.port_last}"


def udp_check(target: GatewayTarget, result: ProbeResult) -> Check:
    title = f"UDP to gateway {target.name}"
    endpoint = f"{_hostport(target.endpoint, target.probe_port)}/udp"
    if result.ok:
        return Check(
            f"udp:{target.name}",
            title,
            "pass",
            f"gateway {result.gateway_name} answered and proved its identity (CA-signed, nonce signed)",
            endpoint=endpoint,
            latency_ms=result.latency_ms,
        )
    ports = f"UDP {target.range_text} (WireGuard) and {target.probe_port} (probe)"
    fixes = {
        "timeout": f"allow outbound {ports} from this host to {target.endpoint}; UDP cannot go "
        "through an HTTP proxy",
        "refused": f"start the gateway daemon on {target.name}, or fix the forwarding of "
        f"{target.probe_port}/udp to it",
        "unreachable": f"give this host a route to {target.endpoint}, or allow {ports} in the egress firewall",
        "dns": f"make {target.endpoint} resolvable from this host, or set the gateway's public endpoint "
        "to an IP address",
        "expired": "check this host's clock (NTP); if it is right, re-enroll the gateway",
        "bad-signature": f"something between this host and {target.endpoint} alters or forges UDP "
        "answers: check middleboxes on the path",
    }
    fix = fixes.get(
        result.kind,
        f"make {_hostport(target.endpoint, target.probe_port)}/udp lead to gateway {target.name} of "
        "this deployment (check NAT and port forwarding)",
    )
    return Check(
        f"udp:{target.name}", title, "fail", result.error or "probe failed", fix=fix, endpoint=endpoint
    )


def udp_unavailable(reason: str) -> Check:
    return Check(
        "udp",
        "UDP to the gateways",
        "fail",
        f"cannot test UDP to the gateways: {reason}",
        fix="fix the controller checks above first: the gateway list comes from the controller",
    )


def no_gateways() -> Check:
    return Check(
        "udp",
        "UDP to the gateways",
        "warn",
        "no gateway is enrolled and active yet: nothing to probe",
        fix="enroll a gateway ('zerogate gateway enroll'), then run this again",
    )


# --------------------------------------------------------------------------- runners


@dataclass
class NetworkReport:
    checks: list[Check] = field(default_factory=list)
    enrolls: str | None = None
    gateway_self: GatewayTarget | None = None
    gateways: list[GatewayTarget] = field(default_factory=list)


def _controller_path(
    url: str, pin: str, proxies: ProxyEnv, tls_step: Callable[[], bytes]
) -> tuple[list[Check], bytes | None]:
    """DNS, TCP and TLS to the controller; returns the checks and the verified CA (or None)."""
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or 443
    proxy = proxy_for_https(host, proxies)
    res = resolve(host, port)
    checks = [dns_check(res, proxy)]
    outcome: TcpOutcome | None
    proxy_at = _proxy_address(proxy) if proxy else None
    if proxy_at is not None:
        proxy_res = resolve(*proxy_at)
        outcome = (
            tcp_connect(proxy_res.addresses, proxy_at[1])
            if proxy_res.ok
            else TcpOutcome(proxy_at[0], proxy_at[1], kind="dns", error=proxy_res.error or "does not resolve")
        )
    else:
        outcome = tcp_connect(res.addresses, port) if res.ok else None
    tcp = tcp_check(host, port, res, outcome, proxy)
    checks.append(tcp)
    if tcp.status == "fail":
        checks.append(
            Check(
                "tls",
                "TLS to the controller (pinned CA)",
                "skip",
                "not attempted: no TCP connection",
                fix="fix the TCP check first",
                endpoint=url,
            )
        )
        return checks, None
    tls = _timed_tls(tls_step)
    return [*checks, tls_check(url, pin, tls)], tls.ca_pem if tls.error is None else None


def _fetch_pinned(url: str, pin: str) -> Callable[[], bytes]:
    """TLS step for a host that knows only the pin (install string)."""
    return lambda: fetch_ca(url, pin, timeout=TLS_TIMEOUT)


def _check_with_ca(url: str, ca_pem: bytes) -> Callable[[], bytes]:
    """TLS step for an enrolled host: its stored CA must verify the controller."""

    def step() -> bytes:
        with ControllerClient(url, ca_pem, timeout=TLS_TIMEOUT) as client:
            client.get("/v1/health")
        return ca_pem

    return step


def probe_gateways(
    targets: Sequence[GatewayTarget], ca_pem: bytes, timeout: float = UDP_TIMEOUT
) -> list[Check]:
    """Probe every gateway (in parallel) and turn the results into checks."""
    if not targets:
        return [no_gateways()]

    def one(t: GatewayTarget) -> Check:
        return udp_check(t, probe(t.endpoint, t.probe_port, ca_pem, timeout, expected_name=t.name))

    with ThreadPoolExecutor(max_workers=min(16, len(targets)), thread_name_prefix="udp-probe") as pool:
        return list(pool.map(one, targets))


def _target(g: Mapping[str, Any]) -> GatewayTarget:
    return GatewayTarget(
        name=str(g["name"]),
        endpoint=str(g["endpoint"]),
        probe_port=int(g["probe_port"]),
        port_first=int(g["port_first"]),
        port_last=int(g["port_last"]),
    )


def check_install_string(text: str, role: str, env: Mapping[str, str], *, probe_udp: bool) -> NetworkReport:
    """Everything a not-yet-enrolled host can check with its install string."""
    report = NetworkReport()
    try:
        info = parse_install_string(text)
    except InvalidInstallString as exc:
        report.checks.append(
            Check(
                "install-string",
                "install string",
                "fail",
                str(exc),
                fix="copy the whole line from 'zerogate admin ... provisioning key' output again",
            )
        )
        return report
    report.checks.append(
        Check(
            "install-string",
            "install string",
            "pass",
            f"controller {info.controller_url}, CA pin {info.ca_pin}, key {token_hint(info.key)}…",
        )
    )
    checks, ca_pem = _controller_path(
        info.controller_url, info.ca_pin, read_proxy_env(env), _fetch_pinned(info.controller_url, info.ca_pin)
    )
    report.checks += checks
    if ca_pem is None:
        report.checks.append(
            Check(
                "key",
                "provisioning key",
                "skip",
                "not checked: no verified connection to the controller",
                fix="fix the controller checks above first",
            )
        )
        if probe_udp:
            report.checks.append(udp_unavailable("the controller, which lists them, is unreachable"))
        return report
    outcome = _preflight_key(info.controller_url, ca_pem, info.key)
    report.checks.append(key_check(role, outcome))
    if outcome.info is None:
        if probe_udp:
            report.checks.append(udp_unavailable("the controller did not list them (see the key check)"))
        return report
    report.enrolls = str(outcome.info.get("role"))
    report.gateways = [_target(g) for g in outcome.info.get("gateways") or []]
    if outcome.info.get("gateway"):
        report.gateway_self = _target(outcome.info["gateway"])
    if probe_udp:
        report.checks += probe_gateways(report.gateways, ca_pem)
    return report


def _preflight_key(url: str, ca_pem: bytes, key: str) -> KeyOutcome:
    try:
        with ControllerClient(url, ca_pem, timeout=TLS_TIMEOUT) as client:
            answer = client.post(PREFLIGHT_PATH, {"key": key})
    except ControllerError as exc:
        return KeyOutcome(error=exc)
    if not isinstance(answer, dict):
        return KeyOutcome(error=ControllerError(f"{PREFLIGHT_PATH} returned an unexpected answer"))
    return KeyOutcome(info=answer)


def _read_state(state_dir: Path) -> tuple[dict[str, Any], bytes, str]:
    device = json.loads((state_dir / "device.json").read_text())
    if not isinstance(device, dict) or not {"controller_url", "ca_pin"} <= device.keys():
        raise ValueError("device.json lacks controller_url/ca_pin")
    ca_pem = (state_dir / "ca.pem").read_bytes()
    credential = (state_dir / "credential").read_text().strip()
    return device, ca_pem, credential


def check_enrolled(role: str, state_dir: Path, env: Mapping[str, str]) -> NetworkReport:
    """Connectivity of an enrolled connector or gateway, from its state directory."""
    report = NetworkReport()
    title = f"{role} state"
    try:
        device, ca_pem, credential = _read_state(state_dir)
    except FileNotFoundError as exc:
        report.checks.append(
            Check(
                "state",
                title,
                "fail",
                f"no enrolled {role} in {state_dir} ({exc.filename} is missing)",
                fix=f"enroll first ('zerogate {role} enroll ...'), pass --state-dir, or pass --install-string",
            )
        )
        return report
    except (OSError, ValueError) as exc:
        report.checks.append(
            Check("state", title, "fail", f"{state_dir} is unreadable: {exc}", fix=f"re-enroll this {role}")
        )
        return report
    url, pin = str(device["controller_url"]), str(device["ca_pin"])
    if device.get("role") not in (None, role):
        report.checks.append(
            Check(
                "state",
                title,
                "fail",
                f"{state_dir} holds a {device.get('role')}, not a {role}",
                fix=f"pass --role {device.get('role')} or the right --state-dir",
            )
        )
        return report
    if not pin_matches(ca_pem, pin):
        report.checks.append(
            Check(
                "state",
                title,
                "fail",
                f"{state_dir / 'ca.pem'} does not match the pinned CA {pin}",
                fix=f"the state directory was altered: re-enroll this {role}",
            )
        )
        return report
    report.checks.append(Check("state", title, "pass", f"device {device.get('name')} in {state_dir}"))
    checks, verified = _controller_path(url, pin, read_proxy_env(env), _check_with_ca(url, ca_pem))
    report.checks += checks
    if verified is None:
        if role == "connector":
            report.checks.append(udp_unavailable("the controller, which lists them, is unreachable"))
        return report
    start = time.monotonic()
    try:
        with ControllerClient(url, ca_pem, token=credential, timeout=TLS_TIMEOUT) as client:
            snapshot = client.get("/v1/snapshot")
    except ControllerError as exc:
        fix = (
            f"re-enroll this {role} with a new install string"
            if isinstance(exc, ApiError)
            else ("fix the controller checks above")
        )
        report.checks.append(
            Check(
                "credential",
                "device credential",
                "fail",
                f"the controller refused the snapshot: {exc}",
                fix=fix,
                endpoint=url,
            )
        )
        if role == "connector":
            report.checks.append(udp_unavailable("no config snapshot"))
        return report
    report.checks.append(
        Check(
            "credential",
            "device credential",
            "pass",
            f"accepted: config snapshot revision {snapshot.get('revision')} for device {snapshot.get('device_id')}",
            endpoint=url,
            latency_ms=_ms(time.monotonic() - start),
        )
    )
    if role == "connector":
        report.gateways = [
            GatewayTarget(
                name=str(g["name"]),
                endpoint=str(g["endpoint"]),
                probe_port=probe_port_for(int(g["port"])),
                port_first=int(g["port"]),
            )
            for g in snapshot.get("gateways") or []
        ]
        report.checks += probe_gateways(report.gateways, ca_pem)
    return report
