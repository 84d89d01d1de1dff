"""A gateway's or connector's report as Prometheus series: one naming for every source.

The controller's ``/metrics`` shows every device from its last stored report; a
daemon's own ``/metrics`` (agent/metrics_local.py) shows itself from the report
it would post. Both go through :class:`ReportSeries`, so one dashboard reads
either. The report is the JSON shape the daemons post (``report()`` in
gateway/daemon.py and connector/daemon.py): a dict, read defensively, since a
daemon's own report is not validated on its way here.

Clients are summed per gateway, never one series each: a gateway with 10,000
clients must not make 40,000 series.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

_GATEWAY_CONNECTOR = ["gateway", "connector"]
_DEVICE_PEER = ["device", "peer"]


class ReportSeries:
    """Collects the series of any number of reports (:meth:`add`); :meth:`families` are those
    that got a sample."""

    def __init__(self) -> None:
        self.peers = GaugeMetricFamily(
            "zerogate_gateway_peers", "WireGuard peers on the gateway", labels=["gateway", "role"]
        )
        self.connector_up = GaugeMetricFamily(
            "zerogate_connector_up",
            "1 when the gateway's probes reach the connector",
            labels=_GATEWAY_CONNECTOR,
        )
        self.connector_active = GaugeMetricFamily(
            "zerogate_connector_active",
            "1 when the connector carries its group's subnets at this gateway",
            labels=_GATEWAY_CONNECTOR,
        )
        self.rtt = GaugeMetricFamily(
            "zerogate_connector_rtt_seconds",
            "Probe round trip gateway -> connector",
            labels=_GATEWAY_CONNECTOR,
        )
        self.handshake = GaugeMetricFamily(
            "zerogate_peer_handshake_age_seconds",
            "Seconds since the last WireGuard handshake with a gateway or connector peer",
            labels=_DEVICE_PEER,
        )
        self.rx = GaugeMetricFamily(
            "zerogate_peer_rx_bytes", "Bytes received from the peer", labels=_DEVICE_PEER
        )
        self.tx = GaugeMetricFamily("zerogate_peer_tx_bytes", "Bytes sent to the peer", labels=_DEVICE_PEER)
        self.clients_rx = GaugeMetricFamily(
            "zerogate_gateway_clients_rx_bytes", "Bytes received from all client peers", labels=["gateway"]
        )
        self.clients_tx = GaugeMetricFamily(
            "zerogate_gateway_clients_tx_bytes", "Bytes sent to all client peers", labels=["gateway"]
        )
        self.tunnel = GaugeMetricFamily(
            "zerogate_connector_tunnel_up", "1 when the connector's tunnel is up", labels=["connector"]
        )
        self.failovers = CounterMetricFamily(
            "zerogate_gateway_failovers",
            "Groups moved to another connector since the gateway started",
            labels=["gateway"],
        )
        self.nft_apply = GaugeMetricFamily(
            "zerogate_gateway_nft_apply_seconds",
            "Time of the gateway's last nftables change (elements or the full table)",
            labels=["gateway", "mode"],
        )

    def add(self, role: str, name: str, report: Mapping[str, Any], unix_now: float) -> None:
        """The series of ``name``'s report (``role`` gateway or connector; others add nothing
        but their peers' handshakes and bytes)."""
        counts: dict[str, int] = {}
        client_rx = client_tx = 0
        for p in report.get("peers") or ():
            peer_role = str(p.get("role", "unknown"))
            counts[peer_role] = counts.get(peer_role, 0) + 1
            if peer_role == "client":
                client_rx += int(p.get("rx_bytes") or 0)
                client_tx += int(p.get("tx_bytes") or 0)
                continue
            peer = str(p.get("name") or p.get("public_key", ""))
            if p.get("latest_handshake"):
                self.handshake.add_metric([name, peer], max(0.0, unix_now - float(p["latest_handshake"])))
            self.rx.add_metric([name, peer], float(p.get("rx_bytes") or 0))
            self.tx.add_metric([name, peer], float(p.get("tx_bytes") or 0))
            if role == "gateway" and peer_role == "connector":
                self.connector_up.add_metric([name, peer], float(bool(p.get("up"))))
                self.connector_active.add_metric([name, peer], float(bool(p.get("active"))))
                if p.get("rtt_ms") is not None:
                    self.rtt.add_metric([name, peer], float(p["rtt_ms"]) / 1000)
        details = report.get("details") or {}
        if role == "connector" and details.get("tunnel_up") is not None:
            self.tunnel.add_metric([name], float(bool(details["tunnel_up"])))
        if role != "gateway":
            return
        for peer_role, n in sorted(counts.items()):
            self.peers.add_metric([name, peer_role], float(n))
        self.clients_rx.add_metric([name], float(client_rx))
        self.clients_tx.add_metric([name], float(client_tx))
        if details.get("failovers") is not None:
            self.failovers.add_metric([name], float(details["failovers"]))
        if details.get("nft_apply_mode") and details.get("nft_apply_ms") is not None:
            mode = str(details["nft_apply_mode"])
            self.nft_apply.add_metric([name, mode], float(details["nft_apply_ms"]) / 1000)

    def families(self) -> list[Metric]:
        every: list[Metric] = [
            self.failovers, self.nft_apply, self.peers, self.connector_up, self.connector_active, self.rtt,
            self.handshake, self.rx, self.tx, self.clients_rx, self.clients_tx, self.tunnel,
        ]  # fmt: skip
        return [family for family in every if family.samples]
