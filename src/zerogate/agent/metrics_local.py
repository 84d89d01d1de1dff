"""A daemon's own ``/metrics``: Prometheus text on a local address, off by default.

The controller's ``/metrics`` shows every device as its last report reached the
controller; this one shows the daemon as it is now, also while the controller
is unreachable. It serves, from a registry of its own (never the library's
global one):

- the process: CPU seconds, resident memory, open file descriptors, start time
  (prometheus-client's process collector) and ``python_info``;
- ``zerogate_daemon_info{role,device,version}`` (1), ``zerogate_daemon_revision``
  (the snapshot revision applied), ``zerogate_daemon_report_errors_total``;
- from the daemon's report (the dict ``report()`` returns, what it POSTs to the
  controller), under the controller's own names and labels, so one dashboard
  reads either source: ``zerogate_gateway_peers``, ``zerogate_connector_up``,
  ``zerogate_connector_active``, ``zerogate_connector_rtt_seconds``,
  ``zerogate_peer_handshake_age_seconds``, ``zerogate_peer_rx_bytes``,
  ``zerogate_peer_tx_bytes``, ``zerogate_gateway_clients_rx_bytes``,
  ``zerogate_gateway_clients_tx_bytes``, ``zerogate_connector_tunnel_up``,
  ``zerogate_gateway_failovers_total``, ``zerogate_gateway_nft_apply_seconds``.

The report is built when scraped, at most once per :data:`FRESH_SECONDS`
(building it asks WireGuard for its peers), so a busy scraper costs the daemon
one ``wg show`` a second at most. Client peers are summed, never one series
each. The listener is plain HTTP without authentication: the setting accepts
only a specific address (loopback, or a management address the operator
names), never the unspecified one (see :mod:`zerogate.agent.settings`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from zerogate.model.report_metrics import ReportSeries

log = logging.getLogger(__name__)

FRESH_SECONDS = 1.0
Report = Callable[[], dict[str, Any]]


class DaemonCollector(Collector):
    """The daemon's series, read from its report when scraped (cached for ``fresh`` s)."""

    def __init__(
        self, role: str, name: str, version: str, report: Report | None, fresh: float = FRESH_SECONDS
    ) -> None:
        self.role, self.name, self.version = role, name, version
        self.report, self.fresh = report, fresh
        self.errors = 0
        self.builds = 0  # reports built (tests: the cache holds)
        self._lock = threading.Lock()
        self._cached: tuple[float, dict[str, Any]] | None = None

    def latest(self) -> tuple[float, dict[str, Any]] | None:
        """(monotonic time built, report), rebuilt when older than ``fresh``; None: no report."""
        if self.report is None:
            return None
        with self._lock:
            now = time.monotonic()
            if self._cached is None or now - self._cached[0] >= self.fresh:
                try:
                    self._cached = (now, self.report())
                    self.builds += 1
                except Exception as exc:  # a scrape must never take the daemon down
                    self.errors += 1
                    log.warning("metrics: could not build the report: %s", exc)
            return self._cached

    def collect(self) -> Iterator[Metric]:
        latest = self.latest()  # first: a failure to build it shows in this very scrape
        labels = {"role": self.role, "device": self.name}
        info = GaugeMetricFamily(
            "zerogate_daemon_info", "The daemon: role, device name and version", labels=[*labels, "version"]
        )
        info.add_metric([self.role, self.name, self.version], 1.0)
        yield info
        errors = CounterMetricFamily(
            "zerogate_daemon_report_errors", "Reports the daemon could not build", labels=list(labels)
        )
        errors.add_metric(list(labels.values()), float(self.errors))
        yield errors
        if latest is None:
            return
        built, report = latest
        age = GaugeMetricFamily(
            "zerogate_daemon_report_age_seconds",
            "Seconds since the report these series come from was built",
            labels=list(labels),
        )
        age.add_metric(list(labels.values()), max(0.0, time.monotonic() - built))
        yield age
        details = report.get("details") or {}
        if isinstance(details.get("revision"), int):
            revision = GaugeMetricFamily(
                "zerogate_daemon_revision", "The snapshot revision the daemon applied", labels=list(labels)
            )
            revision.add_metric(list(labels.values()), float(details["revision"]))
            yield revision
        series = ReportSeries()
        series.add(self.role, self.name, report, time.time())
        yield from series.families()


@dataclass
class LocalMetrics:
    """The listener: :meth:`start` binds ``host:port`` and serves in a thread, :meth:`stop` ends it."""

    host: str
    port: int
    collector: DaemonCollector
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    _server: WSGIServer | None = None
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.registry.register(self.collector)

    @property
    def address(self) -> tuple[str, int]:
        """Where it listens (the port chosen when started with port 0)."""
        if self._server is None:
            raise RuntimeError("the metrics listener is not started")
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        """Bind and serve; OSError when the address cannot be bound (in use, not on this host)."""
        self._server, self._thread = start_http_server(self.port, self.host, self.registry)

    def stop(self) -> None:
        server, thread, self._server, self._thread = self._server, self._thread, None, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)


def start_local_metrics(
    listen: tuple[str, int], role: str, name: str, version: str, report: Report | None
) -> LocalMetrics | None:
    """Serve the daemon's metrics on ``listen``; None (logged) when it cannot be bound:
    the data plane matters more than its metrics, so the daemon runs on without them."""
    metrics = LocalMetrics(listen[0], listen[1], DaemonCollector(role, name, version, report))
    try:
        metrics.start()
    except OSError as exc:
        log.error("metrics: cannot listen on %s port %d (%s); running without /metrics", *listen, exc)
        return None
    log.info("metrics: serving /metrics on %s port %d", *metrics.address)
    return metrics
