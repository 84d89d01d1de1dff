"""connectivity-test of an enrolled host: the controller's snapshot is read as the typed snapshot.

The path to the controller and the controller itself are replaced by fakes here
(the real command against a real controller is in test_preflight.py), so these
tests see exactly what a bad, foreign-version or good snapshot turns into.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Self

import pytest

from zerogate.deploy import connectivity
from zerogate.deploy.checks import Check, GatewayTarget
from zerogate.model.snapshot import ConnectorGroupConfig, ConnectorSnapshot, GatewayEntry
from zerogate.pki.ca import ca_pin, create_ca

URL = "https://ctl.example.test:8443"
WG_KEY = "A" * 43 + "="


class FakeController:
    """Stands in for ControllerClient: answers GET /v1/snapshot with a fixed document."""

    answer: object = None

    def __init__(self, url: str, ca_pem: bytes, **kwargs: Any) -> None:
        pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def get(self, path: str) -> object:
        assert path == "/v1/snapshot"
        return self.answer


@pytest.fixture
def enrolled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, list[GatewayTarget]]:
    """A connector's state dir; the controller path passes; probed gateways are recorded."""
    ca_pem = create_ca("test CA")[1]
    state = tmp_path / "connector"
    state.mkdir()
    device = {"controller_url": URL, "ca_pin": ca_pin(ca_pem), "role": "connector", "name": "c1"}
    (state / "device.json").write_text(json.dumps(device))
    (state / "ca.pem").write_bytes(ca_pem)
    (state / "credential").write_text("secret-token\n")
    probed: list[GatewayTarget] = []

    def probe_gateways(targets: list[GatewayTarget], ca: bytes) -> list[Check]:
        probed.extend(targets)
        return [Check(f"udp:{t.name}", "UDP", "pass", "probed") for t in targets]

    monkeypatch.setattr(connectivity, "_controller_path", lambda url, pin, proxies, step: ([], ca_pem))
    monkeypatch.setattr(connectivity, "ControllerClient", FakeController)
    monkeypatch.setattr(connectivity, "probe_gateways", probe_gateways)
    return state, probed


def results(state: Path, answer: object, monkeypatch: pytest.MonkeyPatch) -> dict[str, Check]:
    monkeypatch.setattr(FakeController, "answer", answer)
    report = connectivity.check_enrolled("connector", state, {})
    return {c.id: c for c in report.checks}


def connector_snapshot() -> dict[str, Any]:
    snapshot = ConnectorSnapshot(
        revision=7,
        device_id=3,
        name="c1",
        address=None,
        connector_group=ConnectorGroupConfig(name="dc1", subnets=(), snat=True, vrrp_virtual_ip=None),
        client_blocks=(),
        gateways=(
            GatewayEntry(
                name="gw1", endpoint="203.0.113.5", port=51820, wg_public_key=WG_KEY, tunnel_address=None
            ),
        ),
    )
    return snapshot.model_dump(mode="json")


def test_a_good_snapshot_lists_the_gateways_to_probe(
    enrolled: tuple[Path, list[GatewayTarget]], monkeypatch: pytest.MonkeyPatch
) -> None:
    state, probed = enrolled
    got = results(state, connector_snapshot(), monkeypatch)
    assert got["credential"].status == "pass" and "revision 7 for device 3" in got["credential"].detail
    assert "snapshot" not in got
    assert probed == [GatewayTarget("gw1", "203.0.113.5", 51821, 51820)]
    assert got["udp:gw1"].status == "pass"


def test_a_snapshot_of_another_major_version_is_a_failed_check(
    enrolled: tuple[Path, list[GatewayTarget]], monkeypatch: pytest.MonkeyPatch
) -> None:
    state, probed = enrolled
    got = results(state, {**connector_snapshot(), "schema_version": "2.0"}, monkeypatch)
    assert got["credential"].status == "pass"
    assert got["snapshot"].status == "fail"
    assert "understands snapshot schema 1.x" in got["snapshot"].detail
    assert "upgrade zerogate on this host" in got["snapshot"].detail
    assert got["udp"].status == "fail" and "unusable" in got["udp"].detail
    assert probed == []


@pytest.mark.parametrize(
    "answer",
    [
        ["not", "an", "object"],
        {"role": "connector", "revision": 1},
        {**connector_snapshot(), "gateways": [{"name": "gw1", "endpoint": "203.0.113.5", "port": "51820"}]},
        {**connector_snapshot(), "role": "gateway"},
    ],
    ids=["not-an-object", "fields-missing", "port-as-text", "other-role"],
)
def test_a_bad_snapshot_is_a_failed_check_not_a_traceback(
    answer: object, enrolled: tuple[Path, list[GatewayTarget]], monkeypatch: pytest.MonkeyPatch
) -> None:
    state, probed = enrolled
    got = results(state, answer, monkeypatch)
    assert got["snapshot"].status == "fail" and got["snapshot"].endpoint == URL
    assert "same zerogate version" in got["snapshot"].fix
    assert got["udp"].status == "fail"
    assert probed == []
