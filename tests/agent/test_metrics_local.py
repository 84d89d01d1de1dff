"""A daemon's own ``/metrics`` (agent/metrics_local.py): the setting, the listener on
loopback with a report built when scraped, and a real gateway daemon in a namespace
(prefix ``zhm``) scraped by a real Prometheus, and listening on nothing by default.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, ip_network
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from zerogate.agent.metrics_local import DaemonCollector, LocalMetrics, start_local_metrics
from zerogate.agent.settings import ConfigError, GatewaySettings, SegmentSettings, load_settings
from zerogate.netops import netns
from zerogate.netops.command import run, spawn
from zerogate.testbed.lab import wait_for
from zerogate.testbed.localrun import LocalController, zerogate_argv
from zerogate.testbed.prometheus import Prometheus

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=5) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = r.read().decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(found: Samples, name: str, **labels: str) -> float | None:
    return found.get((name, tuple(sorted(labels.items()))))


# -- the setting -----------------------------------------------------------------------


@pytest.mark.parametrize("listen", ["", "127.0.0.1:9400", "[::1]:9400", "10.20.30.40:9100"])
def test_metrics_listen_takes_one_specific_address(listen: str, tmp_path: Path) -> None:
    env = {"ZEROGATE_GATEWAY_METRICS_LISTEN": listen}
    settings, _ = load_settings(GatewaySettings, environ=env, flags={"state_dir": tmp_path})
    assert settings.metrics_listen == listen


@pytest.mark.parametrize(
    "listen", ["0.0.0.0:9400", "[::]:9400", "127.0.0.1:0", "127.0.0.1", "localhost:9400", "224.0.0.1:9400"]
)
def test_metrics_listen_refuses_every_address_and_non_addresses(listen: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"ZEROGATE_SEGMENT_METRICS_LISTEN: .*metrics_listen"):
        load_settings(SegmentSettings, environ={"ZEROGATE_SEGMENT_METRICS_LISTEN": listen})
    assert GatewaySettings(state_dir=tmp_path).metrics_listen == ""  # off unless asked


# -- the listener on loopback ----------------------------------------------------------


def gateway_report() -> dict[str, Any]:
    now = int(time.time())
    peers = [
        {"role": "connector", "public_key": "a" * 43 + "=", "name": "cn1", "up": True, "active": True,
         "rtt_ms": 2.0, "latest_handshake": now - 30, "rx_bytes": 100, "tx_bytes": 200},
        {"role": "connector", "public_key": "b" * 43 + "=", "name": "cn2", "up": False, "active": False,
         "rx_bytes": 0, "tx_bytes": 0},
        {"role": "client", "public_key": "c" * 43 + "=", "rx_bytes": 5, "tx_bytes": 7, "latest_handshake": now},
        {"role": "client", "public_key": "d" * 43 + "=", "rx_bytes": 10, "tx_bytes": 20},
    ]  # fmt: skip
    details = {"revision": 12, "failovers": 3, "nft_apply_mode": "full", "nft_apply_ms": 25.0}
    return {"version": "9.9", "interface": "zg-gw", "peers": peers, "details": details}


@pytest.fixture
def served() -> Iterator[tuple[LocalMetrics, list[int]]]:
    calls: list[int] = []

    def report() -> dict[str, Any]:
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("wg show failed")
        return gateway_report()

    metrics = LocalMetrics("127.0.0.1", 0, DaemonCollector("gateway", "edge", "9.9", report, fresh=0.0))
    metrics.start()
    try:
        yield metrics, calls
    finally:
        metrics.stop()


def test_the_daemon_serves_its_report_and_process_as_prometheus_text(
    served: tuple[LocalMetrics, list[int]],
) -> None:
    metrics, _ = served
    host, port = metrics.address
    found = scrape(f"http://{host}:{port}/metrics")
    assert value(found, "zerogate_daemon_info", role="gateway", device="edge", version="9.9") == 1
    assert value(found, "zerogate_daemon_revision", role="gateway", device="edge") == 12
    assert value(found, "zerogate_gateway_peers", gateway="edge", role="connector") == 2
    assert value(found, "zerogate_gateway_peers", gateway="edge", role="client") == 2
    assert value(found, "zerogate_connector_up", gateway="edge", connector="cn1") == 1
    assert value(found, "zerogate_connector_up", gateway="edge", connector="cn2") == 0
    assert value(found, "zerogate_connector_active", gateway="edge", connector="cn1") == 1
    assert value(found, "zerogate_connector_rtt_seconds", gateway="edge", connector="cn1") == 0.002
    age = value(found, "zerogate_peer_handshake_age_seconds", device="edge", peer="cn1")
    assert age is not None and 30 <= age < 90
    assert value(found, "zerogate_peer_rx_bytes", device="edge", peer="cn1") == 100
    assert (
        value(found, "zerogate_gateway_clients_rx_bytes", gateway="edge") == 15
    )  # summed, no per-client series
    assert value(found, "zerogate_gateway_clients_tx_bytes", gateway="edge") == 27
    assert not [k for k in found if ("peer", "c" * 43 + "=") in k[1]]
    assert value(found, "zerogate_gateway_failovers_total", gateway="edge") == 3
    assert value(found, "zerogate_gateway_nft_apply_seconds", gateway="edge", mode="full") == 0.025
    rss = value(found, "process_resident_memory_bytes")
    assert rss is not None and rss > 1_000_000  # the process collector of our own registry
    assert value(found, "process_start_time_seconds") is not None


def test_a_failing_report_is_counted_and_the_scrape_still_answers(
    served: tuple[LocalMetrics, list[int]],
) -> None:
    metrics, calls = served
    url = "http://{}:{}/metrics".format(*metrics.address)
    scrape(url)
    scrape(url)
    third = scrape(url)  # report() raises on its third call: the last good one is shown
    assert len(calls) == 3
    assert value(third, "zerogate_daemon_report_errors_total", role="gateway", device="edge") == 1
    assert value(third, "zerogate_daemon_revision", role="gateway", device="edge") == 12


def test_the_report_is_built_at_most_once_per_second_however_often_scraped() -> None:
    calls: list[int] = []

    def report() -> dict[str, Any]:
        calls.append(1)
        return gateway_report()

    metrics = start_local_metrics(("127.0.0.1", 0), "connector", "cn1", "9.9", report)
    assert metrics is not None
    try:
        url = "http://{}:{}/metrics".format(*metrics.address)
        started = time.monotonic()
        for _ in range(5):
            scrape(url)
        if time.monotonic() - started < 1.0:
            assert len(calls) == 1
    finally:
        metrics.stop()


def test_an_address_in_use_leaves_the_daemon_without_metrics_not_down() -> None:
    first = start_local_metrics(("127.0.0.1", 0), "gateway", "edge", "9.9", None)
    assert first is not None
    try:
        second = start_local_metrics(first.address, "gateway", "edge", "9.9", None)
        assert second is None
        found = scrape("http://{}:{}/metrics".format(*first.address))
        # no report function (the segment server): daemon and process facts only
        assert value(found, "zerogate_daemon_info", role="gateway", device="edge", version="9.9") == 1
        assert not [k for k in found if k[0].startswith("zerogate_gateway_")]
    finally:
        first.stop()


# -- a real gateway daemon in a namespace ------------------------------------------------

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("prometheus") is None or shutil.which("wg") is None,
    reason="needs root, wireguard-tools and Debian's prometheus",
)
METRICS_PORT = 9400


@dataclass
class GatewayHost:
    """A namespace ``zhm-XXXX`` joined to ours by a veth pair: a controller on our end,
    an enrolled gateway ("edge") to be run on theirs."""

    ns: str
    host_address: IPv4Address
    ns_address: IPv4Address
    interface: str  # the gateway's WireGuard interface
    state: Path
    tmp: Path
    controller: LocalController
    token: str = ""  # the admin's, to read the device list

    def run_gateway(self, env: dict[str, str]) -> subprocess.Popen[bytes]:
        argv = [
            *zerogate_argv(),
            "gateway",
            "run",
            "--state-dir",
            str(self.state),
            "--interface",
            self.interface,
        ]
        base = {k: v for k, v in os.environ.items() if not k.startswith("ZEROGATE_")}
        with open(self.tmp / "gateway.log", "ab") as log:
            return spawn(netns.exec_argv(self.ns, argv), stdout=log, env=base | env)

    def tcp_listeners(self) -> list[str]:
        return netns.run_in(self.ns, ["ss", "-Hltn"]).stdout.splitlines()

    def reported(self) -> bool:
        with self.controller.client(self.token) as c:
            return any(d["name"] == "edge" and d["report"] for d in c.get("/v1/devices", {"role": "gateway"}))


def _free_subnet() -> IPv4Network:
    """A /30 in 10.214.0.0/16 that no address of our namespace uses."""
    used = [ip_network(a["local"] + "/" + str(a["prefixlen"]), strict=False)
            for link in json.loads(run(["ip", "-j", "-4", "addr"]).stdout) for a in link.get("addr_info", [])]  # fmt: skip
    for _ in range(50):
        candidate = IPv4Network(f"10.214.{secrets.randbelow(256)}.{4 * secrets.randbelow(64)}/30")
        if not any(candidate.overlaps(u) for u in used):
            return candidate
    raise AssertionError("no free /30 in 10.214.0.0/16")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # our own child, by PID
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.fixture
def gateway_host(tmp_path: Path) -> Iterator[GatewayHost]:
    tag = secrets.token_hex(2)
    ns, outside, inside = f"zhm-{tag}", f"zhmh{tag}", f"zhmg{tag}"
    net = _free_subnet()
    host_address, ns_address = net[1], net[2]
    netns.add_namespace(ns)
    controller: LocalController | None = None
    try:
        netns.add_veth(outside, inside, peer_ns=ns)
        netns.add_address(None, outside, f"{host_address}/30")
        netns.add_address(ns, inside, f"{ns_address}/30")
        for where, link in ((None, outside), (ns, inside), (ns, "lo")):
            netns.set_link(where, link, True)
        controller = LocalController(tmp_path / "controller", host=str(host_address)).init().start()
        admin = controller.bootstrap_admin()
        admin.client.post("/v1/gateways", {"name": "edge", "public_endpoint": str(ns_address)})
        key = admin.client.post("/v1/gateways/edge/provisioning-keys", {})["install_string"]
        state = tmp_path / "state-gw"
        enroll = [*zerogate_argv(), "gateway", "enroll", key, "--state-dir", str(state), "--name", "edge"]
        netns.run_in(ns, enroll, timeout=60)
        host = GatewayHost(ns, host_address, ns_address, f"zhm{tag}gw", state, tmp_path, controller)
        host.token = admin.token
        yield host
    finally:
        for pid in netns.namespace_pids(ns):  # what we started there (wireguard-go, if left)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if controller is not None:
            controller.stop()
        netns.delete_namespace(ns)  # its end of the veth pair takes ours with it
        Path(f"/var/run/wireguard/zhm{tag}gw.sock").unlink(missing_ok=True)


@needs_root
def test_a_gateway_listens_on_nothing_by_default(gateway_host: GatewayHost) -> None:
    proc = gateway_host.run_gateway({})
    try:
        wait_for(gateway_host.reported, 60, "the gateway's first report")
        assert proc.poll() is None
        assert gateway_host.tcp_listeners() == []  # no /metrics, no other TCP listener
    finally:
        _stop(proc)


@needs_root
def test_a_real_prometheus_scrapes_a_running_gateway(gateway_host: GatewayHost, tmp_path: Path) -> None:
    listen = f"{gateway_host.ns_address}:{METRICS_PORT}"
    proc = gateway_host.run_gateway({"ZEROGATE_GATEWAY_METRICS_LISTEN": listen})
    try:
        wait_for(gateway_host.reported, 60, "the gateway's first report")
        assert [line for line in gateway_host.tcp_listeners() if f":{METRICS_PORT} " in line]
        # no CA and no token: a plain-HTTP job, as the daemon serves it
        with Prometheus(tmp_path / "prometheus", listen, b"", "", interval=0.5) as prom:
            try:

                def scraped() -> bool:
                    return any(t["health"] == "up" for t in prom.targets())

                wait_for(scraped, 60, "prometheus to scrape the gateway")

                def series(expr: str) -> float | None:
                    found = prom.query(expr)
                    return float(found[0]["value"][1]) if found else None

                wait_for(lambda: series("zerogate_daemon_revision") is not None, 30, "the revision series")
                info = prom.query('zerogate_daemon_info{role="gateway",device="edge"}')
                assert info and info[0]["metric"]["job"] == "zerogate-daemon"
                assert (series("zerogate_daemon_revision") or 0) >= 1
                assert series('zerogate_gateway_clients_rx_bytes{gateway="edge"}') == 0  # no clients yet
                assert (series("process_resident_memory_bytes") or 0) > 1_000_000
                assert series("zerogate_daemon_report_errors_total") == 0
            except BaseException:
                print(prom.log_tail())
                raise
    finally:
        _stop(proc)
    assert proc.returncode == 0, (gateway_host.tmp / "gateway.log").read_text()[-2000:]
    assert netns.run_in(gateway_host.ns, ["ss", "-Hltn"]).stdout == ""  # stopped with the daemon
