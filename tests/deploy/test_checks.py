"""The pure network checks: measured outcomes and controller answers in, report lines out."""

from __future__ import annotations

from zerogate.deploy.checks import (
    GatewayTarget,
    dns_check,
    key_check,
    snapshot_check,
    tcp_check,
    tls_check,
    udp_check,
)
from zerogate.deploy.probes import KeyOutcome, Resolution, TcpOutcome, TlsOutcome
from zerogate.model.snapshot import InvalidSnapshot, UnsupportedSchema
from zerogate.netops.controller_api import (
    ApiError,
    ControllerUnreachable,
    ServerNameMismatch,
    TLSInterceptionSuspected,
)
from zerogate.netops.udp_probe import ProbeResult
from zerogate.pki.ca import ca_pin, create_ca


def test_network_checks_turn_outcomes_into_fixes() -> None:
    assert dns_check(Resolution("10.0.0.1", ("10.0.0.1",), literal=True)).status == "pass"
    ok = dns_check(Resolution("ctl.example.test", ("192.0.2.7",), latency_ms=3.0))
    assert ok.status == "pass" and "192.0.2.7" in ok.detail and ok.latency_ms == 3.0
    bad = Resolution("ctl.example.test", error="Name or service not known")
    fail = dns_check(bad)
    assert fail.status == "fail" and "/etc/resolv.conf" in fail.fix
    assert dns_check(bad, proxy="http://proxy:3128").status == "warn"

    assert tcp_check("ctl", 443, bad, None, None).detail.startswith("not attempted")
    refused = tcp_check(
        "ctl",
        443,
        ok_res := Resolution("ctl", ("192.0.2.7",)),
        TcpOutcome("192.0.2.7", 443, kind="refused"),
        None,
    )
    assert refused.status == "fail" and "nothing listens" in refused.detail
    timeout = tcp_check("ctl", 443, ok_res, TcpOutcome("192.0.2.7", 443, kind="timeout"), None)
    assert "allow outbound TCP 443 from this host to ctl" in timeout.fix
    unreachable = tcp_check(
        "ctl", 443, ok_res, TcpOutcome("192.0.2.7", 443, kind="unreachable", error="x"), None
    )
    assert "no route to 192.0.2.7:443" in unreachable.detail and "default gateway" in unreachable.fix
    via = tcp_check("ctl", 443, ok_res, TcpOutcome("10.9.9.9", 3128, latency_ms=1.5), "http://proxy:3128")
    assert via.status == "pass" and "via the proxy" in via.title
    secret = tcp_check(
        "ctl", 443, ok_res, TcpOutcome("10.9.9.9", 3128, kind="refused"), "http://u:pw@proxy:3128"
    )
    assert "pw" not in secret.title + secret.detail + secret.fix and "http://***@proxy:3128" in secret.fix

    pin = ca_pin(create_ca("x")[1])
    url = "https://ctl.example.test:8443"
    assert tls_check(url, pin, TlsOutcome(b"pem", 12.0)).status == "pass"
    mitm = tls_check(url, pin, TlsOutcome(error=TLSInterceptionSuspected(url, pin, "sha256/" + "B" * 43)))
    assert mitm.status == "fail" and mitm.detail.startswith("TLS interception suspected")
    assert "ctl.example.test must bypass TLS inspection" in mitm.fix
    name = tls_check(url, pin, TlsOutcome(error=ServerNameMismatch(url, "hostname mismatch")))
    assert name.status == "fail" and "new install string" in name.fix
    down = tls_check(url, pin, TlsOutcome(error=ControllerUnreachable(url, "refused")))
    assert down.status == "fail"


def test_key_check_names_the_problem() -> None:
    info = {
        "role": "connector",
        "connector_group": "dc1",
        "uses_left": 2,
        "expires_at": "2030-01-01T10:00:00",
    }
    good = key_check("connector", KeyOutcome(info=info))
    assert good.status == "pass" and "connector group dc1" in good.detail and "2 use(s) left" in good.detail
    wrong = key_check("gateway", KeyOutcome(info=info))
    assert wrong.status == "fail" and wrong.detail == "this install string enrolls a connector, not a gateway"
    assert "--role connector" in wrong.fix
    revoked = key_check(
        "connector", KeyOutcome(error=ApiError(403, "provisioning key was revoked: ...", None))
    )
    assert revoked.status == "fail" and "revoked" in revoked.detail and "new install string" in revoked.fix
    old = key_check("connector", KeyOutcome(error=ApiError(404, "Not Found", None)))
    assert old.status == "warn" and "older version" in old.detail
    gone = ApiError(404, "the gateway this key was made for no longer exists", None)
    assert key_check("gateway", KeyOutcome(error=gone)).status == "fail"


def test_udp_check_fixes_by_failure_kind() -> None:
    gw = GatewayTarget("gw1", "203.0.113.5", 51821, 51820, 53000)
    ok = udp_check(gw, ProbeResult(True, 4.2, "gw1", None))
    assert ok.status == "pass" and ok.latency_ms == 4.2 and ok.endpoint == "203.0.113.5:51821/udp"
    lost = udp_check(gw, ProbeResult(False, None, None, "no answer", "timeout"))
    assert (
        lost.status == "fail" and "allow outbound UDP 51820-53000 (WireGuard) and 51821 (probe)" in lost.fix
    )
    assert (
        "start the gateway daemon on gw1" in udp_check(gw, ProbeResult(False, None, None, "x", "refused")).fix
    )
    foreign = udp_check(
        gw, ProbeResult(False, 1.0, "other", "not signed by this deployment's CA", "untrusted")
    )
    assert "NAT and port forwarding" in foreign.fix


def test_snapshot_check_says_which_side_to_upgrade() -> None:
    newer = snapshot_check(UnsupportedSchema("connector", "2.0"), "https://ctl:8443")
    assert newer.id == "snapshot" and newer.status == "fail"
    assert "upgrade zerogate on this host" in newer.detail and "upgrade the side" in newer.fix
    older = snapshot_check(UnsupportedSchema("gateway", "0.9"), "https://ctl:8443")
    assert "upgrade the controller" in older.detail
    bad = snapshot_check(
        InvalidSnapshot("the connector snapshot is not valid: revision: x"), "https://ctl:8443"
    )
    assert bad.status == "fail" and "revision" in bad.detail and "same zerogate version" in bad.fix
