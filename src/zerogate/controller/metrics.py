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
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from zerogate.controller.reports import StoredReport
from zerogate.model.report_metrics import ReportSeries

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

    def render(self, devices: Iterable[Metric]) -> bytes:
        """The exposition text: the controller's series, then this scrape's device series."""
        scrape = CollectorRegistry()
        scrape.register(_Families(list(devices)))
        return generate_latest(self.registry) + generate_latest(scrape)


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
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
) -> list[Metric]:
    """Series from each gateway's and connector's latest report:
    ``(role, name, report, last_seen, online)`` (online: :mod:`zerogate.controller.health`);
    the report's own series as :class:`~zerogate.model.report_metrics.ReportSeries` names them."""
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
    series = ReportSeries()
    unix_now = now.timestamp()
    for role, name, report, last_seen, online in devices:
        up.add_metric([role, name], float(online))
        if last_seen is not None:
            seen.add_metric([role, name], max(0.0, (now - last_seen).total_seconds()))
        if report is None:
            continue
        age.add_metric([role, name], max(0.0, (now - report.at).total_seconds()))
        series.add(role, name, report.model_dump(mode="json", exclude_none=True), unix_now)
    return [up, age, seen, *series.families()]
