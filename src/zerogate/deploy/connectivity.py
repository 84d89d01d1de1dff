"""Can this host reach everything its role needs? The runners of preflight and connectivity-test.

:func:`check_install_string` checks a host that is not enrolled yet, from its
install string; :func:`check_enrolled` an enrolled connector or gateway, from
its state directory (``device.json``, ``ca.pem``, ``credential``). Both walk
the path to the controller (DNS, TCP, pinned TLS: :mod:`zerogate.deploy.probes`)
and, for a connector, probe every gateway over UDP (:func:`probe_gateways`);
every measurement becomes a :class:`~zerogate.deploy.checks.Check` through the
pure checks in :mod:`zerogate.deploy.checks`, and a report never raises for
anything the network or the controller does.

Proxies: HTTPS to the controller honours ``HTTPS_PROXY``/``ALL_PROXY``/
``NO_PROXY`` (:mod:`zerogate.deploy.proxyenv`); the TCP check then tests the
path to the proxy. UDP never goes through a proxy.

An enrolled host reads the controller's answer as its typed config snapshot
(:func:`zerogate.model.snapshot.parse_snapshot`); one it cannot use (invalid,
or of another major schema version) is a failed ``snapshot`` check.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from zerogate.deploy.checks import (
    Check,
    GatewayTarget,
    dns_check,
    key_check,
    no_gateways,
    snapshot_check,
    tcp_check,
    tls_check,
    udp_check,
    udp_unavailable,
)
from zerogate.deploy.probes import (
    TLS_TIMEOUT,
    TcpOutcome,
    check_with_ca,
    fetch_pinned,
    preflight_key,
    resolve,
    tcp_connect,
    timed_tls,
    to_ms,
)
from zerogate.deploy.proxyenv import ProxyEnv, proxy_address, proxy_for_https, read_proxy_env
from zerogate.model.snapshot import ConnectorSnapshot, SnapshotError, parse_snapshot
from zerogate.netops.controller_api import ApiError, ControllerClient, ControllerError
from zerogate.netops.udp_probe import probe, probe_port_for
from zerogate.pki.ca import pin_matches
from zerogate.pki.credentials import token_hint
from zerogate.pki.install_string import InvalidInstallString, parse_install_string

__all__ = [
    "UDP_TIMEOUT",
    "NetworkReport",
    "check_enrolled",
    "check_install_string",
    "probe_gateways",
]

UDP_TIMEOUT = 2.0


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
    proxy_at = proxy_address(proxy) if proxy else None
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
    tls = timed_tls(tls_step)
    return [*checks, tls_check(url, pin, tls)], tls.ca_pem if tls.error is None else None


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
    """A gateway as the key preflight lists it (that answer is not a config snapshot)."""
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
        info.controller_url, info.ca_pin, read_proxy_env(env), fetch_pinned(info.controller_url, info.ca_pin)
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
    outcome = preflight_key(info.controller_url, ca_pem, info.key)
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
    checks, verified = _controller_path(url, pin, read_proxy_env(env), check_with_ca(url, ca_pem))
    report.checks += checks
    if verified is None:
        if role == "connector":
            report.checks.append(udp_unavailable("the controller, which lists them, is unreachable"))
        return report
    start = time.monotonic()
    try:
        with ControllerClient(url, ca_pem, token=credential, timeout=TLS_TIMEOUT) as client:
            answer = client.get("/v1/snapshot")
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
    latency_ms = to_ms(time.monotonic() - start)
    try:
        snapshot = parse_snapshot(role, answer)
    except SnapshotError as exc:
        accepted = "accepted: the controller sent a config snapshot"
        report.checks.append(Check("credential", "device credential", "pass", accepted, endpoint=url))
        report.checks.append(snapshot_check(exc, url))
        if role == "connector":
            report.checks.append(udp_unavailable("the config snapshot is unusable (see the snapshot check)"))
        return report
    report.checks.append(
        Check(
            "credential",
            "device credential",
            "pass",
            f"accepted: config snapshot revision {snapshot.revision} for device {snapshot.device_id}",
            endpoint=url,
            latency_ms=latency_ms,
        )
    )
    if isinstance(snapshot, ConnectorSnapshot):
        report.gateways = [
            GatewayTarget(
                name=g.name,
                endpoint=g.endpoint,
                probe_port=probe_port_for(g.port),
                port_first=g.port,
            )
            for g in snapshot.gateways
        ]
        report.checks += probe_gateways(report.gateways, ca_pem)
    return report
