"""systemd units (rendered, parsed, verified by systemd-analyze) and ``zerogate install`` end to end.

The install tests run the real CLI into a temporary root (``--prefix``) and
enroll against a real controller on 127.0.0.1; nothing is started, and nothing
outside the temporary root is written.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import stat
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from zerogate.deploy.systemd import (
    UnitSpec,
    capabilities,
    check_unit,
    parse_unit,
    render_env_file,
    render_unit,
    verify_unit,
)
from zerogate.testbed.localrun import AccountSession, LocalController, zerogate_argv

ZEROGATE = Path("/usr/local/bin/zerogate")
_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "all_proxy")


def spec(role: str, **kw: Any) -> UnitSpec:
    return UnitSpec(
        role=role,  # type: ignore[arg-type]
        zerogate=kw.pop("zerogate", ZEROGATE),
        state_dir=kw.pop("state_dir", Path(f"/var/lib/zerogate/{role}")),
        env_file=Path(f"/etc/zerogate/{role}.env"),
        **kw,
    )


def service(unit: str) -> dict[str, list[str]]:
    return parse_unit(unit)["Service"]


# ---------------------------------------------------------------------------
# units: capabilities and sandbox, per role
# ---------------------------------------------------------------------------


def test_gateway_keeps_exactly_net_admin_and_net_raw() -> None:
    s = service(render_unit(spec("gateway")))
    assert s["CapabilityBoundingSet"] == ["CAP_NET_ADMIN CAP_NET_RAW"]
    assert s["AmbientCapabilities"] == ["CAP_NET_ADMIN CAP_NET_RAW"]
    assert "User" not in s  # root, but only with these two capabilities


def test_connector_keeps_exactly_net_admin_and_bind_service_only_for_a_low_port() -> None:
    assert capabilities(spec("connector", listen_port=51820)) == ("CAP_NET_ADMIN",)
    s = service(render_unit(spec("connector", listen_port=51820)))
    assert s["CapabilityBoundingSet"] == ["CAP_NET_ADMIN"] == s["AmbientCapabilities"]
    assert capabilities(spec("connector", listen_port=500)) == ("CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE")


def test_controller_has_no_capabilities_unless_it_listens_below_1024() -> None:
    s = service(render_unit(spec("controller", listen_port=8443)))
    # An empty assignment is systemd's "empty set", not "no restriction".
    assert s["CapabilityBoundingSet"] == [""] and s["AmbientCapabilities"] == [""]
    assert (s["User"], s["Group"]) == (["zerogate"], ["zerogate"])
    s443 = service(render_unit(spec("controller", listen_port=443)))
    assert s443["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"] == s443["AmbientCapabilities"]


@pytest.mark.parametrize("role", ["controller", "gateway", "connector"])
def test_every_unit_is_sandboxed_and_writes_only_its_state_dir(role: str) -> None:
    text = render_unit(
        spec(role, state_dir=Path("/srv/zg/state"), listen_port=443 if role == "controller" else None)
    )
    assert check_unit(text) == []
    s = service(text)
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "ProtectKernelModules": "yes",
        "RestrictSUIDSGID": "yes",
        "Restart": "on-failure",
        "SystemCallFilter": "@system-service",
    }.items():
        assert s[key] == [value], key
    assert s["ReadWritePaths"] == ["/srv/zg/state"]
    assert parse_unit(text)["Install"]["WantedBy"] == ["multi-user.target"]
    network = role != "controller"
    families = set(s["RestrictAddressFamilies"][0].split())
    assert families == ({"AF_UNIX", "AF_INET", "AF_INET6"} | ({"AF_NETLINK"} if network else set()))
    if network:
        assert s["DeviceAllow"] == ["/dev/net/tun rw"] and s["DevicePolicy"] == ["closed"]
        assert s["ProtectKernelTunables"] == ["no"]  # writes net.ipv4.ip_forward
        assert "PrivateDevices" not in s
    else:
        assert "DeviceAllow" not in s and s["PrivateDevices"] == ["yes"]
        assert s["ProtectKernelTunables"] == ["yes"]


def test_exec_start_runs_the_role_with_its_state_dir() -> None:
    assert service(render_unit(spec("controller")))["ExecStart"] == [
        "/usr/local/bin/zerogate controller run --data-dir /var/lib/zerogate/controller"
    ]
    assert service(render_unit(spec("connector", interface="zg-site", listen_port=51821)))["ExecStart"] == [
        "/usr/local/bin/zerogate connector run --state-dir /var/lib/zerogate/connector --interface zg-site "
        "--listen-port 51821"
    ]


GATEWAY_UNIT = """\
# zerogate-gateway.service - written by 'zerogate install'; re-run it rather than editing.
# Local changes belong in a drop-in: systemctl edit zerogate-gateway.service
[Unit]
Description=zerogate gateway (WireGuard edge and policy enforcement)
Wants=network-online.target
After=network-online.target nftables.service firewalld.service
StartLimitIntervalSec=300
StartLimitBurst=10

[Service]
Type=simple
ExecStart=/usr/local/bin/zerogate gateway run --state-dir /var/lib/zerogate/gateway --interface zg-gw
EnvironmentFile=-/etc/zerogate/gateway.env
Restart=on-failure
RestartSec=5s
TimeoutStopSec=30s
UMask=0077

# Sandbox
NoNewPrivileges=yes
ProtectSystem=strict
ReadWritePaths=/var/lib/zerogate/gateway
ProtectHome=yes
PrivateTmp=yes
# wireguard-go needs the TUN device and /run/wireguard for its control sockets.
DevicePolicy=closed
DeviceAllow=/dev/net/tun rw
RuntimeDirectory=wireguard
RuntimeDirectoryMode=0755
RuntimeDirectoryPreserve=yes
# Writes net.ipv4.ip_forward and per-interface net sysctls; CAP_NET_ADMIN alone limits it
# to network ones.
ProtectKernelTunables=no
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
LockPersonality=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
RestrictNamespaces=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallErrorNumber=EPERM
CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW
AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW

[Install]
WantedBy=multi-user.target
"""


def test_gateway_unit_golden() -> None:
    assert render_unit(spec("gateway")) == GATEWAY_UNIT


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze (package systemd)")
@pytest.mark.parametrize("role", ["controller", "gateway", "connector"])
def test_systemd_analyze_verify_accepts_every_unit(role: str, tmp_path: Path) -> None:
    program = Path(shutil.which("true") or "/bin/true")  # ExecStart must exist for verify
    path = tmp_path / f"zerogate-{role}.service"
    path.write_text(
        render_unit(spec(role, zerogate=program, listen_port=443 if role == "controller" else None))
    )
    assert verify_unit(path) == []


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze (package systemd)")
def test_systemd_analyze_verify_reports_what_systemd_would_ignore(tmp_path: Path) -> None:
    path = tmp_path / "zerogate-gateway.service"
    text = render_unit(spec("gateway", zerogate=Path("/bin/true")))
    path.write_text(text.replace("ProtectSystem=strict", "ProtectSystem=stricter\nPrivateNetwrok=yes"))
    problems = verify_unit(path)
    assert problems is not None
    assert any("PrivateNetwrok" in p for p in problems) and any(
        "protect system" in p.lower() for p in problems
    )


def test_check_unit_finds_structural_mistakes() -> None:
    good = render_unit(spec("connector"))
    assert check_unit(good) == []
    assert "[Service] needs exactly one ExecStart=" in check_unit(good.replace("ExecStart=", "#ExecStart="))
    assert any("expected [Section]" in p for p in check_unit(good + "garbage line\n"))
    assert "unexpected section [Servce]" in check_unit(good.replace("[Service]", "[Servce]"))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("state_dir", Path("/var/lib/zero gate"), "state directory"),
        ("state_dir", Path("var/lib/zerogate"), "state directory"),
        ("state_dir", Path("/var/lib/../etc"), "state directory"),
        ("zerogate", Path("/opt/zg/%h/zerogate"), "zerogate program"),
        ("interface", "a-name-longer-than-15", "interface"),
    ],
)
def test_unit_spec_refuses_what_would_need_quoting_or_break_the_unit(
    field: str, value: Any, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        spec("gateway", **{field: value})


def test_env_file_carries_the_proxy_of_the_installing_shell() -> None:
    text = render_env_file("connector", {"HTTPS_PROXY": "http://proxy.test:3128", "NO_PROXY": "10.0.0.0/8"})
    assert "HTTPS_PROXY=http://proxy.test:3128\n" in text and "NO_PROXY=10.0.0.0/8\n" in text
    plain = render_env_file("connector", {})
    assert all(line.startswith("#") for line in plain.splitlines())


# ---------------------------------------------------------------------------
# zerogate install, end to end
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def controller(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalController]:
    """One SQLite controller for the module: install does not care about the database engine."""
    lc = LocalController(tmp_path_factory.mktemp("controller") / "data").init()
    try:
        lc.start()
        yield lc
    finally:
        lc.stop()


@pytest.fixture(scope="module")
def admin(controller: LocalController) -> AccountSession:
    return controller.bootstrap_admin()


_subnets = itertools.count(1)


def install_string(admin: AccountSession, **key: Any) -> tuple[str, dict[str, Any]]:
    group = f"grp-{uuid.uuid4().hex[:6]}"
    admin.client.post("/v1/connector-groups", {"name": group, "subnets": [f"10.77.{next(_subnets)}.0/24"]})
    created: dict[str, Any] = admin.client.post(f"/v1/connector-groups/{group}/provisioning-keys", key)
    return created["install_string"], created


def zerogate(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZEROGATE_") and k not in _PROXY_VARS}
    env["COLUMNS"] = "200"
    return subprocess.run(
        [*zerogate_argv(), *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_install_connector_enrolls_and_writes_unit_config_and_state(
    admin: AccountSession, tmp_path: Path
) -> None:
    line, _ = install_string(admin, max_uses=1)
    name = f"edge-{uuid.uuid4().hex[:6]}"
    argv = ["install", "--role", "connector", "--prefix", str(tmp_path), "--no-start", "--install-string", line,
            "--name", name, "--ignore-preflight", "systemd", "--json"]  # fmt: skip
    r = zerogate(*argv)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["started"] is False
    assert result["next"] == ["systemctl daemon-reload", "systemctl enable --now zerogate-connector.service"]
    assert {c["id"] for c in result["preflight"]} >= {"arch", "root", "systemd"}

    unit = tmp_path / "etc/systemd/system/zerogate-connector.service"
    env_file = tmp_path / "etc/zerogate/connector.env"
    state = tmp_path / "var/lib/zerogate/connector"
    assert (mode(unit), mode(env_file), mode(state)) == (0o644, 0o600, 0o700)
    s = service(unit.read_text())
    # The unit names paths as the installed host sees them, not the temporary root.
    assert s["ExecStart"][0].split()[1:5] == [
        "connector",
        "run",
        "--state-dir",
        "/var/lib/zerogate/connector",
    ]
    assert s["ReadWritePaths"] == ["/var/lib/zerogate/connector"]
    assert s["EnvironmentFile"] == ["-/etc/zerogate/connector.env"]
    assert os.access(s["ExecStart"][0].split()[0], os.X_OK)
    assert result["verify"] == []

    files = {p.name: mode(p) for p in state.iterdir()}
    assert files == {
        "device.key": 0o600,
        "wg.key": 0o600,
        "credential": 0o600,
        "device.pem": 0o644,
        "ca.pem": 0o644,
        "device.json": 0o644,
    }
    device = json.loads((state / "device.json").read_text())
    assert (device["role"], device["name"]) == ("connector", name)
    listed = next(d for d in admin.client.get("/v1/devices") if d["id"] == device["device_id"])
    assert (listed["name"], listed["role"]) == (name, "connector")

    # Again: the enrollment is kept (the key allowed one use only), nothing changes.
    before = tree(tmp_path)
    again = zerogate(*argv)
    assert again.returncode == 0, again.stderr
    assert any("kept the existing enrollment" in d for d in json.loads(again.stdout)["done"])
    assert tree(tmp_path) == before


@pytest.mark.skipif(os.path.isdir("/run/systemd/system"), reason="this host runs systemd: that check passes")
def test_install_stops_on_a_failed_preflight_check_and_writes_nothing(
    admin: AccountSession, tmp_path: Path
) -> None:
    line, key = install_string(admin)
    r = zerogate(
        "install", "--role", "connector", "--prefix", str(tmp_path), "--no-start", "--install-string", line
    )
    assert r.returncode == 1
    assert "preflight failed (systemd)" in r.stderr and "--ignore-preflight systemd" in r.stderr
    assert list(tmp_path.iterdir()) == []
    used = next(k for k in admin.client.get("/v1/provisioning-keys") if k["id"] == key["id"])
    assert used["uses"] == 0  # the key was not spent


def test_install_with_a_used_key_fails_clearly_and_writes_nothing(
    controller: LocalController, admin: AccountSession, tmp_path: Path
) -> None:
    line, _ = install_string(admin, max_uses=1)
    first = zerogate("install", "--role", "connector", "--prefix", str(tmp_path / "a"), "--no-start",
                     "--install-string", line, "--ignore-preflight", "systemd")  # fmt: skip
    assert first.returncode == 2 and "--prefix" in first.stderr  # the root must exist
    (tmp_path / "a").mkdir()
    assert zerogate("install", "--role", "connector", "--prefix", str(tmp_path / "a"), "--no-start",
                    "--install-string", line, "--ignore-preflight", "systemd").returncode == 0  # fmt: skip
    (tmp_path / "b").mkdir()
    r = zerogate("install", "--role", "connector", "--prefix", str(tmp_path / "b"), "--no-start",
                 "--install-string", line, "--ignore-preflight", "systemd")  # fmt: skip
    assert r.returncode == 1
    assert "used" in r.stderr
    assert list((tmp_path / "b").iterdir()) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--role", "connector", "--install-string", "zg1.not-a-real-string"], "--install-string"),
        (["--role", "controller", "--install-string", "zg1.x"], "not enrolled with an install string"),
        (["--role", "gateway", "--state-dir", "var/lib/zg"], "--state-dir"),
        (["--role", "gateway", "--state-dir", "/var/lib/zero gate"], "--state-dir"),
        (["--role", "connector", "--interface", "much-too-long-name"], "interface"),
        (["--role", "gateway", "--listen-port", "51820"], "--listen-port is for --role connector"),
        (["--role", "gateway", "--exec-path", "/root/.local/bin/zerogate"], "ProtectHome"),
    ],
)
def test_install_refuses_bad_input_before_writing_anything(
    args: list[str], message: str, tmp_path: Path
) -> None:
    r = zerogate("install", "--prefix", str(tmp_path), "--no-start", *args)
    assert r.returncode == 2, r.stdout + r.stderr
    assert message in r.stderr
    assert "error:" in r.stderr and len(r.stderr.strip().splitlines()) <= 3
    assert list(tmp_path.iterdir()) == []


def test_install_controller_creates_the_deployment_once(tmp_path: Path) -> None:
    argv = ["install", "--role", "controller", "--prefix", str(tmp_path), "--no-start", "--listen", "127.0.0.1:8443",
            "--server-name", "zt.example.test", "--json"]  # fmt: skip
    r = zerogate(*argv)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert (
        result["deployment"]["bootstrap_code"]
        and result["deployment"]["url"] == "https://zt.example.test:8443"
    )
    data = tmp_path / "var/lib/zerogate/controller"
    assert mode(data) == 0o700 and (data / "controller.toml").exists()
    s = service((tmp_path / "etc/systemd/system/zerogate-controller.service").read_text())
    assert s["ExecStart"][0].endswith("controller run --data-dir /var/lib/zerogate/controller")
    assert s["CapabilityBoundingSet"] == [""]  # port 8443: no capability at all
    assert s["User"] == ["zerogate"]

    again = zerogate(*argv)
    assert again.returncode == 0, again.stderr
    second = json.loads(again.stdout)
    assert second["deployment"] is None and any("kept the existing deployment" in d for d in second["done"])
