"""Device settings: flags > ZEROGATE_ROLE_* > the TOML file > defaults; the
example files hold exactly the defaults; ``run --check`` prints and exits."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from zerogate.agent import settings as settings_mod
from zerogate.agent.settings import (
    ClientSettings,
    ConfigError,
    ConnectorSettings,
    GatewaySettings,
    SegmentSettings,
    example_config,
    load_settings,
)
from zerogate.cli.main import app
from zerogate.connector.plan import KEEPALIVE_SECONDS
from zerogate.gateway import daemon as gateway_daemon


@pytest.fixture(autouse=True)
def _no_host_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """/etc/zerogate of this machine must not leak in: point it at an empty directory."""
    etc = tmp_path / "etc"
    etc.mkdir()
    monkeypatch.setattr(settings_mod, "CONFIG_DIR", etc)
    for name in list(os.environ):
        if name.startswith(
            ("ZEROGATE_GATEWAY_", "ZEROGATE_CONNECTOR_", "ZEROGATE_CLIENT_", "ZEROGATE_SEGMENT_")
        ):
            monkeypatch.delenv(name)
    return etc


@pytest.mark.parametrize("cls", [GatewaySettings, ConnectorSettings, ClientSettings, SegmentSettings])
def test_each_example_file_loads_to_exactly_the_defaults(cls: type[GatewaySettings]) -> None:
    path = example_config(cls.role)
    loaded, used = load_settings(cls, config=path, environ={})
    assert used == path
    assert loaded == cls()
    # every setting is in the example, so the file documents them all
    text = path.read_text()
    assert all(f"\n{name} = " in text for name in cls.model_fields), text


def test_todays_tuning_constants_are_the_defaults() -> None:
    g, c = GatewaySettings(), ConnectorSettings()
    assert (g.probe_interval, g.down_after) == (gateway_daemon.PROBE_INTERVAL, gateway_daemon.DOWN_AFTER)
    assert (g.watch_seconds, g.report_interval, g.interface) == (25.0, 5.0, "zg-gw")
    assert (c.listen_port, c.keepalive, c.interface) == (51820, KEEPALIVE_SECONDS, "zg-cn")
    assert ClientSettings().interface == "zg-cl"


def test_flags_win_over_the_environment_which_wins_over_the_file(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text('[gateway]\nprobe_interval = 0.3\ndown_after = 2.0\nlog_level = "warning"\n')
    env = {"ZEROGATE_GATEWAY_DOWN_AFTER": "1.5", "ZEROGATE_GATEWAY_INTERFACE": "zg-env"}
    s, _ = load_settings(
        GatewaySettings, config=path, flags={"interface": "zg-flag", "log_level": None}, environ=env
    )
    assert (s.probe_interval, s.down_after, s.interface, s.log_level) == (0.3, 1.5, "zg-flag", "warning")
    # the controller's own ZEROGATE_<KEY> is not read by a device
    s, _ = load_settings(ConnectorSettings, environ={"ZEROGATE_LISTEN_PORT": "8443"})
    assert s.listen_port == 51820


def test_the_default_file_is_read_only_when_it_exists(_no_host_config: Path) -> None:
    assert load_settings(ConnectorSettings, environ={}) == (ConnectorSettings(), None)
    (_no_host_config / "connector.toml").write_text("[connector]\nlisten_port = 51999\n")
    s, used = load_settings(ConnectorSettings, environ={})
    assert (s.listen_port, used) == (51999, _no_host_config / "connector.toml")


def test_errors_name_the_file_or_variable_and_the_key(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text("[gateway]\nprobe_interval = 1.0\n")
    with pytest.raises(ConfigError, match="down_after must be longer than probe_interval"):
        load_settings(GatewaySettings, config=path, environ={})
    path.write_text("[gateway]\nprobe_intervall = 0.1\n")
    with pytest.raises(ConfigError, match=r"gateway\.toml: probe_intervall: Extra inputs are not permitted"):
        load_settings(GatewaySettings, config=path, environ={})
    path.write_text("[connector]\nlisten_port = 1\n")
    with pytest.raises(ConfigError, match=r"unknown table\(s\) connector; the settings go under \[gateway\]"):
        load_settings(GatewaySettings, config=path, environ={})
    with pytest.raises(ConfigError, match="ZEROGATE_CONNECTOR_LISTEN_PORT: Input should be less than"):
        load_settings(ConnectorSettings, environ={"ZEROGATE_CONNECTOR_LISTEN_PORT": "70000"})
    with pytest.raises(ConfigError, match="interface name 'much-too-long-name' is not valid"):
        load_settings(ClientSettings, flags={"interface": "much-too-long-name"}, environ={})
    with pytest.raises(ConfigError, match="No such file"):
        load_settings(ClientSettings, config=tmp_path / "missing.toml", environ={})


def test_run_check_prints_the_effective_settings_and_does_not_start(tmp_path: Path) -> None:
    path = tmp_path / "connector.toml"
    path.write_text("[connector]\nkeepalive = 15\n")
    r = CliRunner().invoke(
        app,
        ["connector", "run", "--check", "--config", str(path), "--listen-port", "51821"],
        env={"ZEROGATE_CONNECTOR_LOG_LEVEL": "DEBUG", "COLUMNS": "200"},
    )
    assert r.exit_code == 0, r.output
    assert "config_file" in r.output and "51821" in r.output and "debug" in r.output and "15" in r.output
    assert "the connector settings are valid" in r.output

    r = CliRunner().invoke(app, ["gateway", "run", "--check", "--log-level", "loud"], env={"COLUMNS": "200"})
    assert r.exit_code == 1
    assert "log_level" in r.output


def test_the_connector_daemon_uses_the_configured_keepalive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fakedataplane import FakeDataplane
    from zerogate.agent.state import DeviceIdentity
    from zerogate.connector.daemon import ConnectorDaemon
    from zerogate.model.snapshot import parse_snapshot
    from zerogate.netops import links

    monkeypatch.setattr(links, "forwarded_before", lambda state_dir: False)
    monkeypatch.setattr(links, "docker_present", lambda: False)
    monkeypatch.setattr(links, "enable_forwarding", lambda: None)
    identity = DeviceIdentity(tmp_path, "connector", "cn", 7, "https://127.0.0.1:1", b"", "zgd_x", "k")
    dp = FakeDataplane()
    snap = {
        "revision": 3,
        "role": "connector",
        "device_id": 7,
        "name": "cn",
        "address": "100.64.255.1",
        "connector_group": {
            "name": "site",
            "subnets": ["10.20.0.0/16"],
            "snat": True,
            "vrrp_virtual_ip": None,
        },
        "client_blocks": ["100.64.0.0/16"],
        "gateways": [
            {
                "name": "edge",
                "endpoint": "203.0.113.7",
                "port": 51820,
                "wg_public_key": "A" * 43 + "=",
                "tunnel_address": "100.64.0.1",
            }
        ],
    }
    ConnectorDaemon(identity, dp, 51820, keepalive=15).apply(
        parse_snapshot("connector", json.loads(json.dumps(snap)))
    )
    assert [p.keepalive for p in dp.peers] == [15]


def test_segment_defaults_and_environment() -> None:
    s = SegmentSettings()
    assert (s.state_dir, s.collect_interval, s.max_ssh_operations) == (
        Path("/var/lib/zerogate/segment"),
        60.0,
        32,
    )
    assert s.directory_config() is None
    s, _ = load_settings(
        SegmentSettings,
        environ={"ZEROGATE_SEGMENT_COLLECT_INTERVAL": "1", "ZEROGATE_SEGMENT_LOG_LEVEL": "DEBUG"},
    )
    assert (s.collect_interval, s.log_level) == (1.0, "debug")


def test_the_segment_ssh_key_exchange_is_openssh_default_unless_chosen() -> None:
    assert SegmentSettings().ssh_kex_algorithms == ""
    s, _ = load_settings(
        SegmentSettings, environ={"ZEROGATE_SEGMENT_SSH_KEX_ALGORITHMS": "curve25519-sha256"}
    )
    assert s.ssh_kex_algorithms == "curve25519-sha256"
    for bad in ("curve25519-sha256 -oProxyCommand=x", "a\nb", "Curve25519"):
        with pytest.raises(ConfigError, match="ssh_kex_algorithms"):
            load_settings(SegmentSettings, flags={"ssh_kex_algorithms": bad}, environ={})


def test_the_segment_asset_dir_is_an_absolute_plain_path_or_the_default() -> None:
    assert SegmentSettings().asset_dir == ""
    s, _ = load_settings(SegmentSettings, environ={"ZEROGATE_SEGMENT_ASSET_DIR": "/srv/zg-segment"})
    assert s.asset_dir == "/srv/zg-segment"
    for bad in ("relative/dir", "/a/../etc", "/a b", "/a\n", "/a;rm"):
        with pytest.raises(ConfigError, match="asset_dir"):
            load_settings(SegmentSettings, flags={"asset_dir": bad}, environ={})


def test_the_segment_directory_takes_its_password_from_a_private_file(tmp_path: Path) -> None:
    secret = tmp_path / "ldap.pw"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    given = {
        "directory_url": "ldap://127.0.0.1:3389",
        "directory_bind_dn": "cn=zerogate,dc=example,dc=org",
        "directory_password_file": str(secret),
        "directory_base_dn": "dc=example,dc=org",
        "directory_monitored_group_dn": "cn=monitored,dc=example,dc=org",
        "directory_protected_group_dn": "cn=protected,dc=example,dc=org",
    }
    s, _ = load_settings(SegmentSettings, flags=given, environ={})
    config = s.directory_config()
    assert config is not None and config.password == "s3cret" and config.port == 3389
    assert "s3cret" not in json.dumps(s.model_dump(mode="json"))
    secret.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        s.directory_config()
    with pytest.raises(ConfigError, match=r"directory_password_file.*must be set too"):
        load_settings(SegmentSettings, flags=given | {"directory_password_file": ""}, environ={})
    with pytest.raises(ConfigError, match="directory_url is empty"):
        load_settings(SegmentSettings, flags=given | {"directory_url": ""}, environ={})
    # no key holds the password itself
    path = tmp_path / "segment.toml"
    path.write_text('[segment]\ndirectory_password = "s3cret"\n')
    with pytest.raises(ConfigError, match="directory_password: Extra inputs are not permitted"):
        load_settings(SegmentSettings, config=path, environ={})


def test_the_segment_jit_listener_is_off_unless_set_and_complete(tmp_path: Path) -> None:
    assert SegmentSettings().jit_listen == ""  # no port opened unless asked
    files = {"jit_cert_file": str(tmp_path / "c.pem"), "jit_key_file": str(tmp_path / "k.pem")}
    for good in ("0.0.0.0:443", "[::]:8443", "192.0.2.1:1"):
        s, _ = load_settings(SegmentSettings, flags={"jit_listen": good, **files}, environ={})
        assert s.jit_listen == good
    for bad in (
        "0.0.0.0:0",
        "0.0.0.0:65536",
        "[0.0.0.0]:443",
        "::1:443",
        "host:443",
        "0.0.0.0:443\n",
        "1.2.3.4",
    ):
        with pytest.raises(ConfigError, match="jit_listen"):
            load_settings(SegmentSettings, flags={"jit_listen": bad, **files}, environ={})
    with pytest.raises(ConfigError, match="jit_cert_file and jit_key_file"):
        load_settings(SegmentSettings, flags={"jit_listen": "0.0.0.0:443"}, environ={})
    with pytest.raises(ConfigError, match="jit_listen is empty"):
        load_settings(SegmentSettings, flags=files, environ={})
