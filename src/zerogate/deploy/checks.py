"""Report lines (:class:`Check`) and the pure checks of the network path.

A :class:`Check` is one line of a preflight or connectivity report: pass /
warn / fail / skip, a one-line detail, and for anything not passing the fix.
The functions here turn a measured outcome (:mod:`zerogate.deploy.probes`,
:mod:`zerogate.netops.udp_probe`) or the controller's answer into a
:class:`Check` and do no I/O, so tests feed them facts: ``dns_check``,
``tcp_check``, ``tls_check``, ``key_check``, ``udp_check`` and
``snapshot_check``. Proxy URLs in details and fixes are redacted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from zerogate.deploy.probes import TCP_TIMEOUT, KeyOutcome, Resolution, TcpOutcome, TlsOutcome
from zerogate.deploy.proxyenv import redact_proxy
from zerogate.model.snapshot import SnapshotError, UnsupportedSchema
from zerogate.netops.controller_api import (
    ApiError,
    ControllerUnreachable,
    ServerNameMismatch,
    TLSInterceptionSuspected,
)
from zerogate.netops.udp_probe import ProbeResult
from zerogate.pki.ca import PKIError

__all__ = [
    "Check",
    "GatewayTarget",
    "Status",
    "any_failed",
    "dns_check",
    "hostport",
    "key_check",
    "no_gateways",
    "snapshot_check",
    "tcp_check",
    "tls_check",
    "udp_check",
    "udp_unavailable",
]

Status = Literal["pass", "warn", "fail", "skip"]


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


def hostport(host: str, port: int) -> str:
    """``host:port``, with brackets around an IPv6 address."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


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
    endpoint = hostport(host, port)
    if outcome is None:
        return Check(
            "tcp",
            title,
            "fail",
            f"not attempted: {host} does not resolve (see the DNS check)",
            fix="fix DNS resolution of the controller first",
            endpoint=endpoint,
        )
    target = hostport(outcome.address or host, outcome.port)
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
    endpoint = f"{hostport(target.endpoint, target.probe_port)}/udp"
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
        f"make {hostport(target.endpoint, target.probe_port)}/udp lead to gateway {target.name} of "
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


def snapshot_check(error: SnapshotError, endpoint: str) -> Check:
    """The controller sent a config snapshot this host cannot use."""
    if isinstance(error, UnsupportedSchema):
        fix = "upgrade the side the detail names, so this host and the controller share a snapshot schema"
    else:
        fix = "run the same zerogate version on this host and on the controller; if they match, report a bug"
    return Check("snapshot", "config snapshot", "fail", str(error), fix=fix, endpoint=endpoint)
