"""keepalived's config, its notify lines, the LAN interface and the VRRP settings:
pure functions, checked as text. The running keepalived is in test_vrrp_agent.py."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest

from zerogate.agent.settings import ConfigError, ConnectorSettings, load_settings
from zerogate.connector.vrrp import (
    DEFAULT_ADVERT,
    VrrpConfig,
    VrrpConfigError,
    check_advert,
    lan_interface_for,
    parse_notify,
    render_keepalived,
    router_id_for,
)

CONFIG = VrrpConfig(
    group="site",
    virtual_ip=IPv4Address("10.20.0.100"),
    prefixlen=24,
    interface="eth1",
    source=IPv4Address("10.20.0.1"),
    router_id=router_id_for("site"),
    priority=100,
    preempt=False,
    advert_interval=0.25,
    peers=(IPv4Address("10.20.0.2"),),
    state_dir=Path("/var/lib/zerogate/connector"),
)

EXPECTED = """\
# Written by 'zerogate connector run' for connector group site; rewritten on every change.
global_defs {
    vrrp_version 3
    max_auto_priority
    vrrp_higher_prio_send_advert
    vrrp_garp_lower_prio_repeat 5
    notify_fifo "/var/lib/zerogate/connector/vrrp.fifo"
}

track_file zg_tunnel {
    file "/var/lib/zerogate/connector/vrrp-tunnel"
    weight 0
    init_file 1
}

vrrp_instance zg_site {
    state BACKUP
    interface eth1
    virtual_router_id 202
    priority 100
    advert_int 0.25
    nopreempt
    virtual_ipaddress {
        10.20.0.100/24 dev eth1
    }
    track_file {
        zg_tunnel
    }
    unicast_src_ip 10.20.0.1
    check_unicast_src
    unicast_peer {
        10.20.0.2
    }
}
"""


def test_unicast_config_renders_exactly() -> None:
    assert render_keepalived(CONFIG) == EXPECTED


def test_multicast_with_preemption_has_no_unicast_block_and_no_nopreempt() -> None:
    text = render_keepalived(replace(CONFIG, peers=(), preempt=True, priority=200, advert_interval=1))
    assert "unicast" not in text and "nopreempt" not in text
    assert "    priority 200\n" in text and "    advert_int 1.00\n" in text


def test_router_id_is_stable_and_in_range() -> None:
    # Both connectors of a group derive it independently: it must never change between versions.
    assert router_id_for("site") == 202
    ids = {router_id_for(f"group-{n}") for n in range(2000)}
    assert min(ids) >= 1 and max(ids) <= 255 and len(ids) > 200


@pytest.mark.parametrize(
    "change",
    [
        {"group": 'site"\n}\nvrrp_instance x {'},
        {"group": "site }"},
        {"group": ""},
        {"interface": "eth1 }"},
        {"interface": 'eth1"'},
        {"interface": "eth1\n"},
        {"interface": "a" * 16},
        {"state_dir": Path('/var/lib/zg"\n}')},
        {"state_dir": Path("/var/lib/my state")},
        {"state_dir": Path("relative/dir")},
        {"state_dir": Path("/var/lib/{x}")},
        {"priority": 0},
        {"priority": 255},
        {"priority": True},
        {"router_id": 0},
        {"router_id": 256},
        {"prefixlen": 0},
        {"advert_interval": 0.001},
        {"advert_interval": 41},
        {"advert_interval": 0.255},
        {"advert_interval": float("nan")},
        {"virtual_ip": "10.20.0.100\n}"},
        {"peers": ("10.20.0.2 }",)},
        {"peers": tuple(IPv4Address(f"10.20.0.{n}") for n in range(2, 12))},
        {"virtual_ip": IPv4Address("10.20.0.1")},
        {"peers": (IPv4Address("10.20.0.100"),)},
    ],
)
def test_hostile_or_wrong_values_never_reach_the_file(change: dict[str, Any]) -> None:
    with pytest.raises(VrrpConfigError) as err:
        replace(CONFIG, **change)
    for value in change.values():
        if isinstance(value, str | Path) and len(str(value)) > 3:
            assert str(value) not in str(err.value)  # the message does not echo the input


def test_advert_interval_in_centiseconds() -> None:
    assert check_advert(0.25) == 0.25
    assert check_advert(1) == 1.0
    assert check_advert(40.95) == 40.95
    with pytest.raises(VrrpConfigError):
        check_advert(True)


@pytest.mark.parametrize(
    ("line", "state", "vrrp_state"),
    [
        (b'INSTANCE "zg_site" MASTER 100\n', "MASTER", "master"),
        (b'INSTANCE "zg_site" BACKUP 100', "BACKUP", "backup"),
        (b'INSTANCE "zg_site" FAULT 0\n', "FAULT", "fault"),
        (b'INSTANCE "zg_site" STOP 100\n', "STOP", "backup"),
        (b'INSTANCE "zg_site" DELETED 100\n', "DELETED", "backup"),
    ],
)
def test_notify_lines(line: bytes, state: str, vrrp_state: str) -> None:
    n = parse_notify(line)
    assert n is not None
    assert (n.instance, n.state, n.vrrp_state) == ("zg_site", state, vrrp_state)


@pytest.mark.parametrize(
    "line",
    [
        b'GROUP "zg_site" MASTER 100',
        b'INSTANCE "zg_site" MASTER',
        b'INSTANCE "zg site" MASTER 100',
        b'INSTANCE "zg_site" LEADER 100',
        b'INSTANCE "zg_site" MASTER 100 extra',
        b'INSTANCE "zg_\xc3\xa9" MASTER 100',
        b"INSTANCE " + b"x" * 300,
        b"",
    ],
)
def test_other_notify_lines_are_ignored(line: bytes) -> None:
    assert parse_notify(line) is None


def _addr(*links: tuple[str, list[tuple[str, int]]]) -> str:
    return json.dumps(
        [
            {
                "ifname": name,
                "addr_info": [{"family": "inet", "local": a, "prefixlen": p} for a, p in addrs],
            }
            for name, addrs in links
        ]
    )


def test_lan_interface_is_the_one_whose_subnet_holds_the_vip() -> None:
    out = _addr(
        ("lo", [("127.0.0.1", 8)]),
        ("eth0", [("198.18.0.20", 24)]),
        ("eth1", [("10.20.0.1", 24), ("10.20.0.100", 24)]),  # the VIP itself, while master
        ("zg-cn", [("100.64.0.5", 32)]),
    )
    name, iface = lan_interface_for(IPv4Address("10.20.0.100"), out)
    assert (name, str(iface)) == ("eth1", "10.20.0.1/24")


def test_the_narrowest_subnet_wins() -> None:
    out = _addr(("eth0", [("10.0.0.1", 8)]), ("eth1", [("10.20.0.1", 24)]))
    assert lan_interface_for(IPv4Address("10.20.0.100"), out)[0] == "eth1"


def test_no_interface_in_the_vip_subnet_says_what_to_do() -> None:
    out = _addr(("eth0", [("198.18.0.20", 24)]), ('bad"name', [("10.20.0.1", 24)]))
    with pytest.raises(VrrpConfigError, match="give the LAN interface an address"):
        lan_interface_for(IPv4Address("10.20.0.100"), out)
    with pytest.raises(VrrpConfigError):
        lan_interface_for(IPv4Address("10.20.0.100"), "not json")


def _settings(**env: str) -> ConnectorSettings:
    environ = {f"ZEROGATE_CONNECTOR_VRRP_{k.upper()}": v for k, v in env.items()}
    return load_settings(ConnectorSettings, config=None, environ=environ)[0]


def test_vrrp_settings_from_the_environment() -> None:
    s = _settings(peers="10.20.0.2, 10.20.0.3", priority="150", preempt="true", router_id="7")
    assert s.vrrp_peers == ["10.20.0.2", "10.20.0.3"]
    assert (s.vrrp_priority, s.vrrp_preempt, s.vrrp_router_id) == (150, True, 7)
    d = ConnectorSettings()
    assert (d.vrrp_peers, d.vrrp_priority, d.vrrp_preempt, d.vrrp_router_id) == ([], 100, False, 0)
    assert d.vrrp_advert_interval == DEFAULT_ADVERT == 0.2


@pytest.mark.parametrize(
    "env",
    [
        {"peers": "10.20.0.2}"},
        {"peers": "224.0.0.18"},
        {"peers": "10.20.0.2,10.20.0.2"},
        {"peers": "300.1.1.1"},
        {"peers": "fe80::1"},
        {"priority": "255"},
        {"priority": "0"},
        {"router_id": "256"},
        {"advert_interval": "0.255"},
        {"advert_interval": "0"},
        {"advert_interval": "41"},
    ],
)
def test_bad_vrrp_settings_are_refused_without_echoing_them(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as err:
        _settings(**env)
    key = next(iter(env))
    assert f"ZEROGATE_CONNECTOR_VRRP_{key.upper()}" in str(err.value)
    if key == "peers":
        assert next(iter(env.values())) not in str(err.value)


def test_status_shows_the_config_and_trusts_no_stale_state(tmp_path: Path) -> None:
    from zerogate.connector.status import vrrp_status

    assert vrrp_status(tmp_path, None) is None  # no VIP, never ran: nothing to show
    (tmp_path / "keepalived.conf").write_text(EXPECTED)
    (tmp_path / "vrrp.json").write_text(
        json.dumps({"state": "MASTER", "interface": "eth1", "router_id": 202})
    )
    (tmp_path / "keepalived.pid").write_text(f"{os.getpid()}\n")  # alive, but not keepalived
    shown = vrrp_status(tmp_path, None)
    assert shown is not None
    assert (shown["state"], shown["keepalived_running"]) == ("stopped", False)
    assert shown["config"] == EXPECTED and shown["config_path"] == str(tmp_path / "keepalived.conf")
    assert (shown["interface"], shown["router_id"]) == ("eth1", 202)
