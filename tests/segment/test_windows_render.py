"""Windows asset scripts: golden files for every rendered script, quoting of hostile
values, the rule plan (management first, never a broad block), the parsers of the
scripts' JSON output, and a real PowerShell parse where ``pwsh`` exists.

Regenerate the golden files with ``ZEROGATE_UPDATE_GOLDEN=1`` (then review the diff).
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zerogate.model.segment import Flow, Listener
from zerogate.model.snapshot import SegmentAsset
from zerogate.netops.command import run
from zerogate.segment.windows import parse, render
from zerogate.segment.windows.render import WindowsLayout, WindowsPlanError, ps_quote

GOLDEN = Path(__file__).parent / "golden" / "windows"
UPDATE = os.environ.get("ZEROGATE_UPDATE_GOLDEN") == "1"
SERVERS = [ipaddress.ip_address("10.99.0.1"), ipaddress.ip_address("fd99::1")]
AT = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
RULES = [
    {"rule_id": 7, "action": "accept", "protocol": "tcp", "port_first": 80, "port_last": 80,
     "sources": ["10.99.254.0/24", "fd99:254::/64"]},
    {"rule_id": 3, "action": "accept", "protocol": "udp", "port_first": 5000, "port_last": 5010, "sources": []},
    {"rule_id": 9, "action": "drop", "protocol": "tcp", "port_first": 23, "port_last": 23,
     "sources": ["192.0.2.0/24"]},
]  # fmt: skip


def asset(mode: str, **fields: Any) -> SegmentAsset:
    data: dict[str, Any] = {
        "asset_id": 4, "name": "win1", "address": "10.99.0.2", "ssh_port": 5986, "ssh_user": "zgsvc",
        "host_key": None, "mode": mode, "rules_revision": 12, "rules": RULES,
        "jump_hosts": ["10.99.0.1/32", "198.51.100.0/24"],
    }  # fmt: skip
    data.update(fields)
    return SegmentAsset.model_validate(data)


def enforce(mode: str) -> str:
    text = render.enforce_script(asset(mode), SERVERS)
    assert text is not None
    return text


SCRIPTS = {
    "preflight.ps1": lambda: render.preflight_script(),
    "learning.ps1": lambda: render.learning_script(),
    "enforce_protected.ps1": lambda: enforce("protected"),
    "enforce_learning_with_blocks.ps1": lambda: enforce("learning_with_blocks"),
    "confirm.ps1": lambda: render.confirm_script(12),
    "rollback.ps1": lambda: render.rollback_script(),
    "unprotect.ps1": lambda: render.unprotect_script(),
    "break_glass.ps1": lambda: render.break_glass_script(),
}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_golden(name: str) -> None:
    text = SCRIPTS[name]()
    path = GOLDEN / name
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"{path} missing: run with ZEROGATE_UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{name} differs; if intended, regenerate with ZEROGATE_UPDATE_GOLDEN=1"


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_scripts_are_printable_ascii_and_end_with_one_json_line(name: str) -> None:
    text = SCRIPTS[name]()
    assert all(0x20 <= ord(c) <= 0x7E for c in text.replace("\n", "")), "a control or non-ASCII character"
    assert text.splitlines()[-1].endswith("ConvertTo-Json -Compress -Depth 4")


# --------------------------------------------------------------------------- quoting


def unquote(text: str) -> tuple[str, str]:
    """A PowerShell single-quoted literal at the start of ``text``: (its value, what follows)."""
    assert text[0] == "'"
    value, i = [], 1
    while True:
        if text[i] == "'":
            if i + 1 < len(text) and text[i + 1] == "'":
                value.append("'")
                i += 2
                continue
            return "".join(value), text[i + 1 :]
        value.append(text[i])
        i += 1


@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=200))
def test_quoted_value_reads_back_whole(value: str) -> None:
    assert unquote(ps_quote(value)) == (value, "")


@pytest.mark.parametrize(
    "value", ["it's", "$(Remove-Item C:\\)", "`$env:PATH`", "a; Stop-Computer", "'; calc; '", "@{}", "${x}"]
)
def test_hostile_printable_values_stay_one_inert_literal(value: str) -> None:
    quoted = ps_quote(value)
    assert unquote(quoted) == (value, "")
    assert quoted.count("'") == 2 + 2 * value.count("'")


@pytest.mark.parametrize("value", ["a\nb", "a\rb", "a\x00", "\x1b[31m", "a\u2019b", "a\u2018", "\u201b", "é"])
def test_control_and_typographic_quote_characters_are_refused(value: str) -> None:
    with pytest.raises(WindowsPlanError) as info:
        ps_quote(value)
    assert value not in str(info.value)


@pytest.mark.parametrize(
    "fields",
    [
        {"state_dir": "C:\\zg'; Remove-Item C:\\ -Recurse; '"},
        {"state_dir": "C:\\zg\nStop-Computer"},
        {"state_dir": "\\\\server\\share"},
        {"group": "zerogate$(calc)"},
        {"task_path": "\\zerogate"},
        {"task_name": "x`y"},
    ],
)
def test_hostile_layout_is_refused(fields: dict[str, str]) -> None:
    with pytest.raises(WindowsPlanError):
        WindowsLayout(**fields)


@pytest.mark.parametrize("name", ["win1\nStop-Computer", "win1'; calc", "win1$(calc)", "win1`"])
def test_hostile_asset_name_is_refused(name: str) -> None:
    hostile = asset("protected").model_copy(update={"name": name})
    with pytest.raises(WindowsPlanError):
        render.enforce_script(hostile, SERVERS)


# --------------------------------------------------------------------------- plan


def test_protected_allows_management_first_and_has_no_block_rule() -> None:
    rules = render.plan_rules(asset("protected"), SERVERS)
    assert rules is not None
    assert rules[0].name == "zerogate-segment-management"
    assert rules[0].ports == ("5985", "5986")
    assert rules[0].remote == ("10.99.0.1", "198.51.100.0/24", "fd99::1")
    assert {r.action for r in rules} == {"Allow"}
    assert [r.name for r in rules[1:]] == ["zerogate-segment-rule-3", "zerogate-segment-rule-7"]
    assert "-DefaultInboundAction Block" in enforce("protected")


def test_learning_with_blocks_renders_narrow_blocks_and_keeps_the_default() -> None:
    rules = render.plan_rules(asset("learning_with_blocks"), SERVERS)
    assert rules is not None
    assert [(r.name, r.action, r.remote) for r in rules[1:]] == [
        ("zerogate-segment-rule-9", "Block", ("192.0.2.0/24",))
    ]
    assert "-DefaultInboundAction Block" not in enforce("learning_with_blocks")


@pytest.mark.parametrize("sources", [[], ["10.99.0.0/16"], ["198.51.100.7/32"]])
def test_deny_rule_that_would_cut_winrm_is_refused(sources: list[str]) -> None:
    deny = {"rule_id": 1, "action": "drop", "protocol": "tcp", "port_first": 5000, "port_last": 6000,
            "sources": sources}  # fmt: skip
    with pytest.raises(WindowsPlanError, match="would block WinRM"):
        render.plan_rules(asset("learning_with_blocks", rules=[deny]), SERVERS)


def test_deny_rule_from_elsewhere_on_winrm_port_is_allowed() -> None:
    deny = {"rule_id": 1, "action": "drop", "protocol": "tcp", "port_first": 5985, "port_last": 5985,
            "sources": ["203.0.113.0/24"]}  # fmt: skip
    rules = render.plan_rules(asset("learning_with_blocks", rules=[deny]), SERVERS)
    assert rules is not None and rules[-1].action == "Block"


def test_no_rules_for_modes_that_enforce_nothing_and_no_server_refused() -> None:
    assert render.enforce_script(asset("learning"), SERVERS) is None
    assert render.enforce_script(asset("monitored"), SERVERS) is None
    with pytest.raises(WindowsPlanError, match="no segment server"):
        render.enforce_script(asset("protected"), [])
    with pytest.raises(WindowsPlanError, match="confirm deadline"):
        render.enforce_script(asset("protected"), SERVERS, confirm_after=5)


def test_rollback_is_armed_before_any_change_and_undone_on_error() -> None:
    text = enforce("protected")
    export = text.index("advfirewall export")
    arm = text.index("Register-ScheduledTask")
    first_change = text.index("Remove-NetFirewallRule")
    assert (
        export < arm < first_change < text.index("New-NetFirewallRule") < text.index("Set-NetFirewallProfile")
    )
    catch = text[text.index("} catch {") :]
    assert catch.index("advfirewall import") < catch.index("Remove-ZgTask") < catch.index("throw")


# --------------------------------------------------------------------------- output parsers


def output(**fields: Any) -> str:
    return "WARNING: noise before\n" + json.dumps({"v": 1, **fields}) + "\n"


PREFLIGHT = {
    "service": "Running",
    "profiles": [{"name": "Domain", "enabled": "True", "inbound": "Block", "outbound": "Allow"}],
    "ours": 0, "other_allow": 31, "other_block": 0,
    "winrm": [{"transport": "HTTP", "port": 5985}, {"transport": "HTTPS", "port": 5986}],
    "listen": [{"p": "tcp", "a": "0.0.0.0", "port": 445, "proc": "System"},
               {"p": "udp", "a": "::", "port": 123, "proc": "svchost"}],
}  # fmt: skip


def test_preflight_findings() -> None:
    pf = parse.parse_preflight(output(**PREFLIGHT), 5986)
    assert pf.ok and pf.ssh_ports == (5985, 5986)
    names = {i.name: i.ok for i in pf.items}
    assert names == {
        "firewall_service": True,
        "profiles": True,
        "other_allow_rules": False,
        "winrm_ports": True,
    }
    assert Listener("tcp", ipaddress.ip_address("0.0.0.0"), 445, "System") in pf.listeners


def test_preflight_not_ok_without_firewall_service_or_winrm_port() -> None:
    assert not parse.parse_preflight(output(**{**PREFLIGHT, "service": "Stopped"}), 5986).ok
    assert not parse.parse_preflight(output(**{**PREFLIGHT, "winrm": [{"port": 5985}]}), 5986).ok


def test_learning_gives_the_same_flows_as_the_linux_learner() -> None:
    text = output(
        listen=[{"p": "tcp", "a": "0.0.0.0", "port": 3389, "proc": "svchost"},
                {"p": "tcp", "a": "::", "port": 445, "proc": "System"}],
        est=[{"la": "10.99.0.2", "lp": 3389, "ra": "10.99.7.5", "rp": 50123, "proc": "svchost"},
             {"la": "10.99.0.2", "lp": 3389, "ra": "10.99.7.5", "rp": 50124, "proc": "svchost"},
             {"la": "10.99.0.2", "lp": 50200, "ra": "10.99.8.8", "rp": 443, "proc": "chrome"},
             {"la": "127.0.0.1", "lp": 3389, "ra": "127.0.0.1", "rp": 50999, "proc": "svchost"},
             {"la": "fe80::1%12", "lp": 445, "ra": "fe80::9%12", "rp": 50000, "proc": "System"},
             {"la": "bogus", "lp": 1, "ra": "10.0.0.1", "rp": 2}],
        addr=["10.99.0.2", "fe80::1%12", "127.0.0.1"],
    )  # fmt: skip
    got = parse.parse_learning(text, at=AT, outbound=True)
    peer = ipaddress.ip_address
    assert got.flows == (
        Flow("tcp", 445, peer("fe80::9"), "System", AT, AT),
        Flow("tcp", 3389, peer("10.99.7.5"), "svchost", AT, AT, count=2),
        Flow("tcp", 443, peer("10.99.8.8"), None, AT, AT, direction="outbound"),
    )
    assert got.skipped == 1
    assert parse.parse_learning(text, at=AT).flows[-1].peer == peer("10.99.7.5")  # no outbound


@pytest.mark.parametrize(
    "text",
    ["", "no json at all\n", '{"v": 2}\n', "{not json\n", '{"v": 1, "listen": {"p": "tcp"}}\n',
     '{"v": 1, "est": "x"}\n', "x" * (parse.MAX_OUTPUT + 1)],
)  # fmt: skip
def test_learning_output_refused_without_echoing_it(text: str) -> None:
    with pytest.raises(parse.WindowsOutputError) as info:
        parse.parse_learning(text, at=AT)
    assert "not json" not in str(info.value) and len(str(info.value)) < 200


def test_result_parsers_check_the_revision() -> None:
    assert parse.parse_applied(output(applied=12, rules=3), 12) == 3
    with pytest.raises(parse.WindowsOutputError):
        parse.parse_applied(output(applied=11, rules=3), 12)
    assert parse.parse_confirm(output(confirm="confirmed", revision=12), 12) == "confirmed"
    with pytest.raises(parse.WindowsOutputError):
        parse.parse_confirm(output(confirm="confirmed", revision=11), 12)
    assert parse.parse_unprotected(output(unprotected=False, failed=["rules", "evil"])) == (False, ("rules",))


# --------------------------------------------------------------------------- a real PowerShell parser

PWSH = shutil.which("pwsh")
_PARSE = (
    "$errs = $null; $tokens = $null; "
    "[void][System.Management.Automation.Language.Parser]::ParseFile({path}, [ref]$tokens, [ref]$errs); "
    "foreach ($e in $errs) { Write-Output ('{0}: {1}' -f $e.Extent.StartLineNumber, $e.Message) }"
)


@pytest.mark.skipif(
    PWSH is None,
    reason="no PowerShell here: pwsh is not a Debian package and this machine reaches only PyPI, npm and "
    "Debian (no Microsoft repository, no NuGet); the scripts are checked by golden files and quoting tests only",
)
@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_real_powershell_parser_accepts_script(name: str, tmp_path: Path) -> None:
    assert PWSH is not None
    path = tmp_path / name
    path.write_text(SCRIPTS[name]())
    command = _PARSE.replace("{path}", ps_quote(str(path)))
    out = run([PWSH, "-NoProfile", "-NonInteractive", "-Command", command], timeout=60)
    assert out.stdout.strip() == ""
