"""``GET /metrics``: who may read it, what it counts, and a real Prometheus scraping it.

Against a real controller (SQLite and PostgreSQL); the last test starts Debian's
``prometheus`` on loopback, configured as an operator would (HTTPS pinned to the
deployment CA, a metrics token from a 0600 file), and queries its HTTP API.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from apiaccess import enroll_connector, raw
from zerogate.pki.ca import create_csr, generate_private_key
from zerogate.pki.wireguard import generate_keypair
from zerogate.testbed.lab import wait_for
from zerogate.testbed.localrun import AccountSession, LocalController
from zerogate.testbed.prometheus import Prometheus


@pytest.fixture(scope="module")
def metrics_token(admin: AccountSession) -> str:
    token: str = admin.client.post("/v1/tokens", {"name": "prometheus", "kind": "metrics", "ttl_days": 1})[
        "token"
    ]
    return token


@pytest.fixture(scope="module")
def user(controller: LocalController, admin: AccountSession) -> Iterator[AccountSession]:
    session = controller.create_user(admin, f"met-{uuid.uuid4().hex[:6]}", [])
    yield session
    session.client.close()


def samples(controller: LocalController, token: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition, keyed by (name, sorted labels)."""
    r = raw(controller, "GET", "/metrics", token=token)
    assert r.status_code == 200, r.text[:300]
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    out = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_need_a_metrics_token_or_an_admin_and_the_token_reads_nothing_else(
    controller: LocalController, admin: AccountSession, user: AccountSession, metrics_token: str
) -> None:
    assert raw(controller, "GET", "/metrics").status_code == 401
    assert raw(controller, "GET", "/metrics", token=user.token).status_code == 403
    assert raw(controller, "GET", "/metrics", token=admin.token).status_code == 200
    assert raw(controller, "GET", "/metrics", token=metrics_token).status_code == 200
    # the metrics token is no admin: it lists, creates and changes nothing
    assert raw(controller, "GET", "/v1/devices", token=metrics_token).status_code == 403
    assert raw(controller, "GET", "/v1/tokens", token=metrics_token).status_code == 401
    created = raw(controller, "POST", "/v1/tokens", {"name": "x", "kind": "api"}, token=metrics_token)
    assert created.status_code == 403
    listed = admin.client.get("/v1/tokens")
    assert [t["kind"] for t in listed if t["name"] == "prometheus"] == ["metrics"]
    assert (
        raw(controller, "POST", "/v1/tokens", {"name": "y", "kind": "root"}, token=admin.token).status_code
        == 422
    )


def test_requests_are_counted_by_route_template_never_by_raw_path(
    controller: LocalController, admin: AccountSession, metrics_token: str
) -> None:
    probe = f"scan{uuid.uuid4().hex[:8]}"
    before = samples(controller, metrics_token)
    assert raw(controller, "GET", f"/v1/connector-groups/{probe}", token=admin.token).status_code == 404
    assert raw(controller, "GET", f"/{probe}/admin.php").status_code == 404
    after = samples(controller, metrics_token)
    route = "/v1/connector-groups/{name}"
    total = "zerogate_http_requests_total"
    assert (
        value(after, total, route=route, method="GET", status="404")
        == value(before, total, route=route, method="GET", status="404") + 1
    )
    assert value(after, total, route="other", method="GET", status="404") >= 1
    text = raw(controller, "GET", "/metrics", token=metrics_token).text
    assert probe not in text  # a scanner's paths create no series


def test_sign_ins_and_enrollments_are_counted_by_outcome(
    controller: LocalController, admin: AccountSession, metrics_token: str
) -> None:
    before = samples(controller, metrics_token)
    wrong = {"username": admin.username, "password": "not the password at all", "totp": "000000"}
    assert raw(controller, "POST", "/v1/auth/login", wrong).status_code == 401
    enroll_connector(controller, admin, "met", "10.78.0.0/24")
    bad_key = {"key": "zgk_" + "A" * 43, "name": "nobody", "csr": "x", "wg_public_key": "y"}
    assert raw(controller, "POST", "/v1/enroll", bad_key).status_code in (401, 403, 422)
    after = samples(controller, metrics_token)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("zerogate_signins_total", outcome="refused") == 1
    assert grew("zerogate_signins_total", outcome="success") == 0
    assert grew("zerogate_enrollments_total", role="connector", outcome="success") == 1
    assert value(after, "zerogate_revision") >= 1


def test_device_reports_become_series(
    controller: LocalController, admin: AccountSession, metrics_token: str
) -> None:
    device = enroll_connector(controller, admin, "met", "10.79.0.0/24")
    report: dict[str, Any] = {
        "version": "0.1.0",
        "interface": "zg-cn",
        "peers": [
            {
                "role": "gateway",
                "public_key": "g" * 43 + "=",
                "name": "edge",
                "latest_handshake": int(time.time()) - 7,
                "rx_bytes": 1234,
                "tx_bytes": 5678,
            }
        ],
        "details": {"tunnel_up": True},
    }
    assert raw(controller, "POST", "/v1/report", report, token=device["credential"]).status_code == 204
    found = samples(controller, metrics_token)
    name = device["name"]
    assert value(found, "zerogate_connector_tunnel_up", connector=name) == 1
    assert value(found, "zerogate_peer_rx_bytes", device=name, peer="edge") == 1234
    assert value(found, "zerogate_peer_tx_bytes", device=name, peer="edge") == 5678
    assert 7 <= value(found, "zerogate_peer_handshake_age_seconds", device=name, peer="edge") < 120
    assert 0 <= value(found, "zerogate_device_report_age_seconds", role="connector", device=name) < 120


def test_a_gateway_report_gives_failovers_and_nft_apply_time(
    controller: LocalController, admin: AccountSession, metrics_token: str
) -> None:
    name = f"gw-{uuid.uuid4().hex[:6]}"
    admin.client.post("/v1/gateways", {"name": name, "public_endpoint": "gw.example.test"})
    key = admin.client.post(f"/v1/gateways/{name}/provisioning-keys", {})["key"]
    body = {
        "key": key,
        "name": name,
        "csr": create_csr(generate_private_key(), name).decode(),
        "wg_public_key": generate_keypair()[1],
    }
    credential = raw(controller, "POST", "/v1/enroll", body).json()["credential"]
    cn = {
        "role": "connector",
        "public_key": "c" * 43 + "=",
        "name": "cn1",
        "up": True,
        "active": True,
        "rtt_ms": 2.5,
    }
    details = {"failovers": 3, "nft_apply_mode": "elements", "nft_apply_ms": 17.0, "report_interval": 5.0}
    report = {"version": "0.1.0", "interface": "zg-gw", "peers": [cn], "details": details}
    assert raw(controller, "POST", "/v1/report", report, token=credential).status_code == 204
    found = samples(controller, metrics_token)
    assert value(found, "zerogate_gateway_failovers_total", gateway=name) == 3
    assert value(found, "zerogate_gateway_nft_apply_seconds", gateway=name, mode="elements") == 0.017
    assert value(found, "zerogate_connector_active", gateway=name, connector="cn1") == 1
    assert value(found, "zerogate_connector_rtt_seconds", gateway=name, connector="cn1") == 0.0025
    assert value(found, "zerogate_device_online", role="gateway", device=name) == 1
    assert value(found, "zerogate_gateway_peers", gateway=name, role="connector") == 1
    report["details"] = details | {"nft_apply_mode": "sometimes"}
    assert raw(controller, "POST", "/v1/report", report, token=credential).status_code == 422


def test_a_real_prometheus_scrapes_the_controller_with_a_pinned_ca_and_a_metrics_token(
    controller: LocalController, admin: AccountSession, metrics_token: str, tmp_path: Path
) -> None:
    target = re.sub(r"^https://", "", controller.url)
    with Prometheus(tmp_path / "prometheus", target, controller.ca_pem, metrics_token, interval=0.5) as prom:
        try:

            def scraped() -> bool:
                return any(t["health"] == "up" for t in prom.targets())

            wait_for(scraped, 60, "prometheus to scrape the controller")
            revision = admin.client.get("/v1/health")["revision"]

            def has_revision() -> bool:
                found = prom.query("zerogate_revision")
                return bool(found) and float(found[0]["value"][1]) >= revision

            wait_for(has_revision, 30, "zerogate_revision in prometheus")
            signins = prom.query('zerogate_signins_total{outcome="success"}')
            assert signins and float(signins[0]["value"][1]) >= 1  # the admin fixture signed in
            assert prom.query('zerogate_http_requests_total{route="/metrics",status="200"}')
            assert (Path(tmp_path / "prometheus" / "token").stat().st_mode & 0o777) == 0o600
        except AssertionError:
            print(prom.log_tail())
            raise
