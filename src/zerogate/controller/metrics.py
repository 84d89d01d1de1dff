"""The controller's Prometheus metrics: ``GET /metrics`` on the API listener.

Two kinds of series:

- the controller's own, kept in one :class:`ControllerMetrics` per app (not
  the library's global registry: a process may run several apps, the tests
  do): requests by route template and status, request time, snapshot build
  and policy compile time, sign-ins and enrollments by outcome, throttled
  requests, the revision and the number of devices watching for it;
- the devices', read at scrape time from their latest stored reports
  (:func:`device_families`): for every gateway and connector its report age,
  and per gateway its peers, each connector's up/active state, round-trip
  time, handshake age and bytes. Clients are summed per gateway, not one
  series each: a gateway with 10,000 clients must not make 40,000 series.

Who may scrape: an admin, or a token made for it
(``zerogate admin token create NAME --metrics``), which can read this and
nothing else. Prometheus sends it as ``authorization: credentials_file``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from zerogate.controller.reports import StoredReport

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_FAST = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ControllerMetrics:
    """The controller's own series; ``revision`` and ``watchers`` are read when scraped."""

    def __init__(self, revision: Callable[[], float], watchers: Callable[[], float]) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "zerogate_http_requests", "API requests answered", ["route", "method", "status"], registry=r
        )
        self.request_seconds = Histogram(
            "zerogate_http_request_duration_seconds",
            "Time to answer an API request (a long-poll counts its wait)",
            ["route"],
            buckets=(*_FAST, 30.0, 60.0),
            registry=r,
        )
        self.snapshot_seconds = Histogram(
            "zerogate_snapshot_build_seconds",
            "Time to build one device's snapshot",
            ["role"],
            buckets=_FAST,
            registry=r,
        )
        self.policy_compile_seconds = Histogram(
            "zerogate_policy_compile_seconds",
            "Time to compile the policy for a revision",
            buckets=_FAST,
            registry=r,
        )
        self.signins = Counter(
            "zerogate_signins", "Sign-ins (password + TOTP) by outcome", ["outcome"], registry=r
        )
        self.enrollments = Counter(
            "zerogate_enrollments", "Device enrollments by role and outcome", ["role", "outcome"], registry=r
        )
        self.throttled = Counter(
            "zerogate_throttled_requests",
            "Requests refused with 429 (brute-force throttle)",
            ["route"],
            registry=r,
        )
        Gauge("zerogate_revision", "The configuration revision devices follow", registry=r).set_function(
            revision
        )
        Gauge("zerogate_watchers", "Devices waiting in a snapshot long-poll", registry=r).set_function(
            watchers
        )
        for outcome in (
            "success",
            "failure",
            "throttled",
        ):  # every outcome from the start: rate() needs a zero
            self.signins.labels(outcome)

    def render(self, devices: Iterable[GaugeMetricFamily | CounterMetricFamily]) -> bytes:
        """The exposition text: the controller's series, then this scrape's device series."""
        scrape = CollectorRegistry()
        scrape.register(_Families(list(devices)))
        return generate_latest(self.registry) + generate_latest(scrape)


class _Families(Collector):
    def __init__(self, families: list[GaugeMetricFamily | CounterMetricFamily]) -> None:
        self.families = families

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        return iter(self.families)


class RequestMetrics:
    """ASGI middleware: count every answer by route *template* (``/v1/devices/{device_id}``,
    never the raw path, so a scanner cannot create series) and status."""

    def __init__(self, app: ASGIApp, metrics: ControllerMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.monotonic()

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            # the router leaves the matched route in the scope; none matched: one shared series
            route = str(getattr(scope.get("route"), "path", "other"))
            m = self.metrics
            m.requests.labels(route, _method(scope.get("method", "")), str(status)).inc()
            m.request_seconds.labels(route).observe(time.monotonic() - started)
            if status == 429:
                m.throttled.labels(route).inc()


def outcome(exc: BaseException | None) -> str:
    """success, throttled (429) or refused (any other error), for the outcome label."""
    if exc is None:
        return "success"
    return "throttled" if getattr(exc, "status", None) == 429 else "refused"


def _method(method: str) -> str:
    return method if method in ("GET", "POST", "PATCH", "PUT", "DELETE", "HEAD", "OPTIONS") else "other"


def device_families(
    devices: Iterable[tuple[str, str, StoredReport | None, datetime | None, bool]], now: datetime
) -> list[GaugeMetricFamily | CounterMetricFamily]:
    """Series from each gateway's and connector's latest report:
    ``(role, name, report, last_seen, online)`` (online: :mod:`zerogate.controller.health`)."""
    up = GaugeMetricFamily(
        "zerogate_device_online",
        "1 when the device was heard from within three of its report intervals",
        labels=["role", "device"],
    )
    age = GaugeMetricFamily(
        "zerogate_device_report_age_seconds",
        "Seconds since the device's last report",
        labels=["role", "device"],
    )
    seen = GaugeMetricFamily(
        "zerogate_device_last_seen_age_seconds",
        "Seconds since the device last called the controller (report or snapshot)",
        labels=["role", "device"],
    )
    peers = GaugeMetricFamily(
        "zerogate_gateway_peers", "WireGuard peers on the gateway", labels=["gateway", "role"]
    )
    cn_up = GaugeMetricFamily(
        "zerogate_connector_up",
        "1 when the gateway's probes reach the connector",
        labels=["gateway", "connector"],
    )
    cn_active = GaugeMetricFamily(
        "zerogate_connector_active",
        "1 when the connector carries its group's subnets at this gateway",
        labels=["gateway", "connector"],
    )
    rtt = GaugeMetricFamily(
        "zerogate_connector_rtt_seconds",
        "Probe round trip gateway -> connector",
        labels=["gateway", "connector"],
    )
    handshake = GaugeMetricFamily(
        "zerogate_peer_handshake_age_seconds",
        "Seconds since the last WireGuard handshake with a gateway or connector peer",
        labels=["device", "peer"],
    )
    rx = GaugeMetricFamily(
        "zerogate_peer_rx_bytes", "Bytes received from the peer", labels=["device", "peer"]
    )
    tx = GaugeMetricFamily("zerogate_peer_tx_bytes", "Bytes sent to the peer", labels=["device", "peer"])
    clients_rx = GaugeMetricFamily(
        "zerogate_gateway_clients_rx_bytes", "Bytes received from all client peers", labels=["gateway"]
    )
    clients_tx = GaugeMetricFamily(
        "zerogate_gateway_clients_tx_bytes", "Bytes sent to all client peers", labels=["gateway"]
    )
    tunnel = GaugeMetricFamily(
        "zerogate_connector_tunnel_up", "1 when the connector's tunnel is up", labels=["connector"]
    )
    failovers = CounterMetricFamily(
        "zerogate_gateway_failovers",
        "Groups moved to another connector since the gateway started",
        labels=["gateway"],
    )
    nft_apply = GaugeMetricFamily(
        "zerogate_gateway_nft_apply_seconds",
        "Time of the gateway's last nftables change (elements or the full table)",
        labels=["gateway", "mode"],
    )
    unix_now = now.timestamp()
    for role, name, report, last_seen, online in devices:
        up.add_metric([role, name], float(online))
        if last_seen is not None:
            seen.add_metric([role, name], max(0.0, (now - last_seen).total_seconds()))
        if report is None:
            continue
        age.add_metric([role, name], max(0.0, (now - report.at).total_seconds()))
        if role == "connector" and report.details.tunnel_up is not None:
            tunnel.add_metric([name], float(report.details.tunnel_up))
        counts: dict[str, int] = {}
        sums = [0, 0]
        for p in report.peers:
            counts[p.role] = counts.get(p.role, 0) + 1
            if p.role == "client":
                sums[0] += p.rx_bytes
                sums[1] += p.tx_bytes
                continue
            peer = p.name or p.public_key
            if p.latest_handshake:
                handshake.add_metric([name, peer], max(0.0, unix_now - p.latest_handshake))
            rx.add_metric([name, peer], float(p.rx_bytes))
            tx.add_metric([name, peer], float(p.tx_bytes))
            if role == "gateway" and p.role == "connector":
                cn_up.add_metric([name, peer], float(bool(p.up)))
                cn_active.add_metric([name, peer], float(bool(p.active)))
                if p.rtt_ms is not None:
                    rtt.add_metric([name, peer], p.rtt_ms / 1000)
        if role == "gateway":
            if report.details.failovers is not None:
                failovers.add_metric([name], float(report.details.failovers))
            if report.details.nft_apply_mode and report.details.nft_apply_ms is not None:
                nft_apply.add_metric(
                    [name, report.details.nft_apply_mode], report.details.nft_apply_ms / 1000
                )
            for peer_role, n in sorted(counts.items()):
                peers.add_metric([name, peer_role], float(n))
            clients_rx.add_metric([name], float(sums[0]))
            clients_tx.add_metric([name], float(sums[1]))
    return [
        up,
        age,
        seen,
        failovers,
        nft_apply,
        peers,
        cn_up,
        cn_active,
        rtt,
        handshake,
        rx,
        tx,
        clients_rx,
        clients_tx,
        tunnel,
    ]
