"""Pure parts of the testbed: names, addresses, the rendered ip commands, app configs.

The sshd config is also checked by the real ``sshd -t``.
"""

from __future__ import annotations

import subprocess
from collections import defaultdict
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from zerogate.netops import netns
from zerogate.testbed.apps import render_nginx_conf, render_sshd_config
from zerogate.testbed.topology import (
    Layout,
    TestbedError,
    Topology,
    plan_topology,
)


def test_layout_names_and_addresses_follow_the_address_plan() -> None:
    lay = Layout(7)
    assert lay.prefix == "zg7"
    assert lay.ns("gw") == "zg7-gw"
    assert lay.namespaces == ["inet", "lan", "gw", "cl1", "cl2", "cn1", "cn2", "app", "atk"]
    assert lay.internet == IPv4Network("198.18.7.0/24")
    assert lay.lan == IPv4Network("10.99.7.0/24")
    assert lay.host_address == IPv4Address("198.18.7.254")
    assert lay.gateway_address == IPv4Address("198.18.7.1")
    assert lay.client_address(1) == IPv4Address("198.18.7.10")
    assert lay.client_address(2) == IPv4Address("198.18.7.11")
    assert lay.connector_wan(1) == IPv4Address("198.18.7.20")
    assert lay.attacker_address == IPv4Address("198.18.7.66")
    assert lay.connector_lan(2) == IPv4Address("10.99.7.2")
    assert lay.app_address == IPv4Address("10.99.7.10")
    assert lay.wg_interface("gw") == "zg7gw"
    assert lay.wg_interface("cn1") == "zg7cn1"
    assert lay.wan_interface("cn1") == "zg7cn1w"
    assert lay.lan_interface("cn1") == "zg7cn1l"
    assert lay.lan_interface("app") == "zg7appl"


def test_layout_refuses_what_does_not_exist() -> None:
    lay = Layout(7, clients=1, connectors=1, attacker=False)
    with pytest.raises(ValueError, match="has 1 client"):
        lay.client_address(2)
    with pytest.raises(ValueError, match="no namespace 'atk'"):
        lay.ns("atk")
    with pytest.raises(ValueError, match="no interface on the LAN"):
        lay.lan_interface("gw")
    with pytest.raises(ValueError, match="starting with a letter"):
        lay.wg_interface("1gw")
    with pytest.raises(ValueError, match="0 to 9 clients"):
        Layout(7, clients=10)
    with pytest.raises(ValueError, match=r"outside 1\.\.250"):
        Layout(251)


def test_unbuilt_topology_says_how_to_build_it() -> None:
    topo = Topology()
    with pytest.raises(TestbedError, match="not built yet"):
        _ = topo.gateway_address
    with pytest.raises(TestbedError, match="not built yet"):
        _ = topo.tmp
    topo.close()  # closing what was never built is fine


def test_interface_names_fit_and_never_clash() -> None:
    """Largest slot, most hosts: every name <= 15 chars, unique per namespace, distinct from WireGuard's."""
    lay = Layout(250, clients=9, connectors=9)
    plan = plan_topology(lay)
    names: dict[str, set[str]] = defaultdict(set)
    for command in plan.root:
        if command[:2] == ["link", "add"]:
            ends = [(command[2], command[4] if command[3] == "netns" else "root")]
            ends.append((command[command.index("peer") + 2], command[-1]))
            for name, ns in ends:
                assert len(name) <= 15, name
                assert name not in names[ns], f"{name} twice in {ns}"
                names[ns].add(name)
    wg = {lay.wg_interface(role) for role in lay.hosts}
    all_links = set().union(*names.values())
    assert not wg & all_links
    # No two slots share a WireGuard name (the socket directory is machine-wide).
    assert Layout(1).wg_interface("cn12") != Layout(11).wg_interface("cn2")


GOLDEN_PLAN = """\
# root
netns add zg7-inet
netns add zg7-lan
netns add zg7-gw
netns add zg7-cl1
netns add zg7-cn1
netns add zg7-app
netns add zg7-atk
link add zg7host type veth peer name zg7hostb netns zg7-inet
address add 198.18.7.254/24 dev zg7host
link set dev zg7host up
link add zg7gww netns zg7-gw type veth peer name zg7gwwb netns zg7-inet
link add zg7cl1w netns zg7-cl1 type veth peer name zg7cl1wb netns zg7-inet
link add zg7cn1w netns zg7-cn1 type veth peer name zg7cn1wb netns zg7-inet
link add zg7atkw netns zg7-atk type veth peer name zg7atkwb netns zg7-inet
link add zg7cn1l netns zg7-cn1 type veth peer name zg7cn1lb netns zg7-lan
link add zg7appl netns zg7-app type veth peer name zg7applb netns zg7-lan
# zg7-inet
link set dev lo up
link add zg7inet type bridge
link set dev zg7inet up
link set dev zg7hostb master zg7inet
link set dev zg7hostb up
link set dev zg7gwwb master zg7inet
link set dev zg7gwwb up
link set dev zg7cl1wb master zg7inet
link set dev zg7cl1wb up
link set dev zg7cn1wb master zg7inet
link set dev zg7cn1wb up
link set dev zg7atkwb master zg7inet
link set dev zg7atkwb up
# zg7-lan
link set dev lo up
link add zg7lan type bridge
link set dev zg7lan up
link set dev zg7cn1lb master zg7lan
link set dev zg7cn1lb up
link set dev zg7applb master zg7lan
link set dev zg7applb up
# zg7-gw
link set dev lo up
address add 198.18.7.1/24 dev zg7gww
link set dev zg7gww up
# zg7-cl1
link set dev lo up
address add 198.18.7.10/24 dev zg7cl1w
link set dev zg7cl1w up
# zg7-cn1
link set dev lo up
address add 198.18.7.20/24 dev zg7cn1w
link set dev zg7cn1w up
address add 10.99.7.1/24 dev zg7cn1l
link set dev zg7cn1l up
# zg7-app
link set dev lo up
address add 10.99.7.10/24 dev zg7appl
link set dev zg7appl up
# zg7-atk
link set dev lo up
address add 198.18.7.66/24 dev zg7atkw
link set dev zg7atkw up
route replace 10.99.7.0/24 via 198.18.7.20
# sysctl
zg7-gw net.ipv4.ip_forward=0
zg7-cl1 net.ipv4.ip_forward=0
zg7-cn1 net.ipv4.ip_forward=0
zg7-app net.ipv4.ip_forward=0
zg7-atk net.ipv4.ip_forward=0
"""


def test_plan_renders_the_expected_ip_commands() -> None:
    plan = plan_topology(Layout(7, clients=1, connectors=1, attacker=True))
    text = "# root\n" + netns.render_batch(plan.root)
    for ns, commands in plan.namespaces.items():
        text += f"# {ns}\n" + netns.render_batch(commands)
    text += "# sysctl\n"
    for ns, settings in plan.sysctls.items():
        text += "".join(f"{ns} {k}={v}\n" for k, v in settings.items())
    assert text == GOLDEN_PLAN


def test_plan_without_attacker_has_no_attacker_route() -> None:
    plan = plan_topology(Layout(3, clients=0, connectors=2, attacker=False))
    rendered = netns.render_batch(plan.root) + "".join(
        netns.render_batch(c) for c in plan.namespaces.values()
    )
    assert "atk" not in rendered and "cl1" not in rendered
    assert "route" not in rendered


def test_batch_rendering_refuses_words_ip_would_split() -> None:
    with pytest.raises(ValueError, match="special characters"):
        netns.render_batch([["link", "add", "a b"]])
    with pytest.raises(ValueError, match="special characters"):
        netns.render_batch([["link", "add", ""]])
    with pytest.raises(ValueError, match="1-15 characters"):
        netns.cmd_add_bridge("sixteen-chars-xx")


def test_parsers_read_real_output_shapes() -> None:
    assert netns.parse_namespace_list("zg7-gw (id: 3)\nzg7-app\n\n") == ["zg7-gw", "zg7-app"]
    assert netns.parse_pids("12\n345\n") == [12, 345]


def test_rendered_nginx_config_keeps_everything_private(tmp_path: Path) -> None:
    # `nginx -t` would bind the address; the running nginx in test_topology.py checks the rest.
    text = render_nginx_conf(IPv4Address("10.99.7.10"), tmp_path)
    assert "listen 10.99.7.10:80;" in text and "listen 10.99.7.10:8080;" in text
    assert 'return 200 "$remote_addr\\n";' in text
    assert "daemon off;" in text
    paths = [
        line.split()[1].rstrip(";")
        for line in text.splitlines()
        if line.strip().split(" ")[0].endswith(("pid", "_path", "error_log"))
    ]
    assert paths and all(p.startswith(str(tmp_path)) for p in paths), paths


def test_rendered_sshd_config_passes_sshd_t(tmp_path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "host_ed25519")], check=True
    )
    conf = tmp_path / "sshd_config"
    conf.write_text(render_sshd_config(IPv4Address("10.99.7.10"), tmp_path))
    done = subprocess.run(["/usr/sbin/sshd", "-t", "-f", str(conf)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
