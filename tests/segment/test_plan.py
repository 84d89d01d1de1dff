"""The asset table ``inet zerogate_segment``: golden files per mode, the
management allow-list before any approved rule, refusals that would lock the
server out, and ``nft -c`` on every rendering in a throw-away namespace.

Regenerate the golden files with ``ZEROGATE_UPDATE_GOLDEN=1``.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from nstools import Netns
from zerogate.deploy.firewall.scope import TableRef, nft_scope
from zerogate.model.snapshot import SegmentAsset
from zerogate.segment.plan import SegmentPlanError, removal_script, render_asset_table

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("ZEROGATE_UPDATE_GOLDEN") == "1"
SERVERS = [ipaddress.ip_address("10.99.0.1"), ipaddress.ip_address("fd99::1")]
RULES = [
    {"rule_id": 7, "action": "accept", "protocol": "tcp", "port_first": 80, "port_last": 80,
     "sources": ["10.99.254.0/24", "fd99:254::/64"]},
    {"rule_id": 3, "action": "accept", "protocol": "udp", "port_first": 5000, "port_last": 5010, "sources": []},
    {"rule_id": 9, "action": "drop", "protocol": "tcp", "port_first": 23, "port_last": 23,
     "sources": ["192.0.2.0/24"]},
]  # fmt: skip

needs_root_nft = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("nft") is None, reason="needs root and the Debian package nftables"
)


def asset(mode: str, **fields: Any) -> SegmentAsset:
    data: dict[str, Any] = {
        "asset_id": 4, "name": "web1", "address": "10.99.0.2", "ssh_port": 22, "ssh_user": "root",
        "host_key": None, "mode": mode, "rules_revision": 12, "rules": RULES,
        "jump_hosts": ["10.99.0.1/32", "198.51.100.0/24"],
    }  # fmt: skip
    data.update(fields)
    return SegmentAsset.model_validate(data)


def rendered(mode: str) -> str:
    text = render_asset_table(asset(mode), SERVERS, [22, 2222])
    assert text is not None
    return text


@pytest.mark.parametrize("mode", ["protected", "learning_with_blocks"])
def test_golden(mode: str) -> None:
    path = GOLDEN / f"{mode}.nft"
    text = rendered(mode)
    if UPDATE:
        path.write_text(text)
    assert path.exists(), f"{path} missing: run with ZEROGATE_UPDATE_GOLDEN=1"
    assert text == path.read_text(), (
        f"{path.name} differs; if intended, regenerate with ZEROGATE_UPDATE_GOLDEN=1"
    )


def _lines(text: str) -> list[str]:
    return [ln.strip() for ln in text.splitlines()]


def test_protected_allows_management_first_then_approved_rules_then_drops() -> None:
    lines = _lines(rendered("protected"))
    assert "type filter hook input priority filter; policy drop;" in lines
    ssh = next(i for i, ln in enumerate(lines) if "SSH from the segment server" in ln)
    first_rule = next(i for i, ln in enumerate(lines) if "zerogate rule" in ln)
    assert lines.index('iifname "lo" accept comment "loopback"') < ssh < first_rule
    # the segment server and the jump hosts, overlapping entries collapsed; the real sshd ports
    assert lines[ssh].startswith("ip saddr { 10.99.0.1, 198.51.100.0/24 } tcp dport { 22, 2222 } accept")
    assert any(ln.startswith("ip6 saddr fd99::1 tcp dport { 22, 2222 } accept") for ln in lines)
    assert 'ip saddr 10.99.254.0/24 tcp dport 80 accept comment "zerogate rule 7"' in lines
    assert 'udp dport 5000-5010 accept comment "zerogate rule 3"' in lines
    assert not any("dport 23" in ln for ln in lines)  # a deny rule means nothing in protected mode
    assert lines[-3] == 'counter drop comment "not approved"'


def test_learning_with_blocks_accepts_by_default_and_enforces_only_the_denies() -> None:
    lines = _lines(rendered("learning_with_blocks"))
    assert "type filter hook input priority filter; policy accept;" in lines
    ssh = next(i for i, ln in enumerate(lines) if "SSH from the segment server" in ln)
    deny = lines.index('ip saddr 192.0.2.0/24 tcp dport 23 drop comment "zerogate rule 9"')
    assert ssh < deny
    assert not any("zerogate rule 7" in ln or "not approved" in ln for ln in lines)


@pytest.mark.parametrize("mode", ["monitored", "learning"])
def test_modes_without_enforcement_render_no_table(mode: str) -> None:
    assert render_asset_table(asset(mode), SERVERS, [22]) is None


def test_the_script_touches_our_table_only_and_never_flushes() -> None:
    for text in (rendered("protected"), rendered("learning_with_blocks"), removal_script()):
        scope = nft_scope(text)
        assert scope.tables == (TableRef("inet", "zerogate_segment"),) and not scope.whole_ruleset
        assert "flush" not in text


def test_a_table_that_would_lock_the_server_out_is_refused() -> None:
    with pytest.raises(SegmentPlanError, match="no segment server address"):
        render_asset_table(asset("protected"), [], [22])
    with pytest.raises(SegmentPlanError, match="no sshd port"):
        render_asset_table(asset("protected"), SERVERS, [])


@needs_root_nft
def test_nft_accepts_every_rendering(make_netns: Callable[[str], Netns]) -> None:
    ns = make_netns("sp")
    for mode in ("protected", "learning_with_blocks"):
        ns.run("nft", "-c", "-f", "-", input=rendered(mode))
    bare = render_asset_table(asset("protected", rules=[], jump_hosts=[]), SERVERS[:1], [22])
    assert bare is not None
    ns.run("nft", "-c", "-f", "-", input=bare)
    ns.run("nft", "-f", "-", input=removal_script())  # removing a table that is not there works
    assert ns.run("nft", "list", "ruleset").stdout.strip() == ""
