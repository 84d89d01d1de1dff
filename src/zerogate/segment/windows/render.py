"""PowerShell for a Windows segment asset, rendered as text from typed values (pure).

Every script is a function of validated inputs: each value that enters a script
(names, addresses, ports, paths, the revision) is checked with ``re.fullmatch``
and written as a single-quoted PowerShell string (:func:`ps_quote`), so no input
can start a subexpression, a variable or a new statement. Every script ends by
printing one JSON line that :mod:`zerogate.segment.windows.parse` reads.

What Windows enforcement is, and why:

- our rules live only in our own group (:data:`GROUP`): replacing them is
  "remove the group's rules, add the new ones" in one script, and removing
  enforcement is one group delete; other products' rules are never touched;
- ``protected``: one ``Allow`` rule per approved rule, the management allow-list
  (WinRM 5985/5986 from the segment server and the jump hosts) always first, then
  the profiles' default inbound action ``Block``. Never a broad ``Block`` rule:
  on Windows a block rule wins over every allow rule, management included;
- ``learning_with_blocks``: the explicit deny rules as narrow ``Block`` rules; one
  that would also block the management channel is refused;
- commit-confirm (:func:`enforce_script`): the policy is exported with
  ``netsh advfirewall export`` and a one-shot scheduled task that imports it back
  is registered at now + N s *before* anything changes; :func:`confirm_script`,
  run over a fresh WinRM session, disarms it. A server that never confirms
  leaves the host to restore itself. The export is imported by SYSTEM, so its
  directory is restricted to SYSTEM and Administrators first;
- the profiles' settings before our first change are saved once
  (``defaults.json``); :func:`unprotect_script` puts them back.

Errors: :class:`WindowsPlanError` (a ``SegmentPlanError``) names the value refused,
without echoing it when it came from outside.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from zerogate.model.segment import Address
from zerogate.model.snapshot import SegmentAsset, SegmentRule
from zerogate.segment.plan import SegmentPlanError

GROUP = "zerogate-segment"
WINRM_PORTS = (5985, 5986)
CONFIRM_MIN, CONFIRM_MAX = 30, 3600  # seconds before the rollback task fires
PROFILES = ("Domain", "Private", "Public")
OUTPUT_VERSION = 1
MAX_LISTENERS = 4096
MAX_CONNECTIONS = 65536

Prefix = ipaddress.IPv4Network | ipaddress.IPv6Network

_SAFE = re.compile(r"[\x20-\x7e]{0,512}")  # printable ASCII only: no curly quotes, no controls
_ASSET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")
_GROUP_NAME = re.compile(r"[a-z][a-z0-9-]{0,63}")
_DIR = re.compile(r"[A-Za-z]:\\(?:[A-Za-z0-9._-]{1,64}\\){0,8}[A-Za-z0-9._-]{1,64}")
_TASK_PATH = re.compile(r"\\(?:[A-Za-z0-9._-]{1,64}\\){1,4}")
_ADDRESS_TEXT = re.compile(r"[0-9A-Fa-f.:]{2,39}(?:/[0-9]{1,3})?")


class WindowsPlanError(SegmentPlanError):
    """A Windows script cannot be rendered safely; the message says which value and why."""


def ps_quote(value: str) -> str:
    """``value`` as a PowerShell single-quoted string literal.

    Inside single quotes PowerShell expands nothing (no ``$``, no backtick
    escapes); the only special character is the quote itself, doubled. PowerShell
    also takes the typographic quotes U+2018-U+201B as single quotes, so only
    printable ASCII is accepted at all (no control character, no newline)."""
    if not isinstance(value, str) or not _SAFE.fullmatch(value):
        raise WindowsPlanError("a value for a PowerShell script must be printable ASCII of 0-512 characters")
    return "'" + value.replace("'", "''") + "'"


def _checked(pattern: re.Pattern[str], value: str, what: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise WindowsPlanError(
            f"{what} is not acceptable in a PowerShell script (expected {pattern.pattern})"
        )
    return value


def _port(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise WindowsPlanError(f"{what} must be a port number 1-65535")
    return value


def _address_text(value: Address | Prefix) -> str:
    if not isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address | ipaddress.IPv4Network
                      | ipaddress.IPv6Network):  # fmt: skip
        raise WindowsPlanError("an address must be an ipaddress value")
    net = ipaddress.ip_network(value)
    text = str(net.network_address) if net.num_addresses == 1 else str(net)
    return _checked(_ADDRESS_TEXT, text, "an address")


@dataclass(frozen=True)
class WindowsLayout:
    """Where our things live on the host: the rule group, the state directory (the
    policy export and the saved profile defaults) and the rollback task."""

    group: str = GROUP
    state_dir: str = r"C:\ProgramData\zerogate\segment"
    task_path: str = "\\zerogate\\"
    task_name: str = "zerogate-segment-rollback"

    def __post_init__(self) -> None:
        _checked(_GROUP_NAME, self.group, "the rule group")
        _checked(_DIR, self.state_dir, "the state directory")
        _checked(_TASK_PATH, self.task_path, "the task path")
        _checked(_GROUP_NAME, self.task_name, "the task name")

    def prelude(self) -> list[str]:
        return [
            "$ErrorActionPreference = 'Stop'",
            "$ProgressPreference = 'SilentlyContinue'",
            f"$group = {ps_quote(self.group)}",
            f"$dir = {ps_quote(self.state_dir)}",
            "$export = Join-Path $dir 'rollback.wfw'",
            "$defaults = Join-Path $dir 'defaults.json'",
            f"$taskName = {ps_quote(self.task_name)}",
            f"$taskPath = {ps_quote(self.task_path)}",
        ]


def _script(title: str, lines: Iterable[str]) -> str:
    return f"# zerogate segment: {title}\n" + "\n".join(lines) + "\n"


def _json(fields: str) -> str:
    """The closing line: one compressed JSON object (``fields``: PowerShell hashtable entries)."""
    return f"[ordered]@{{ v = {OUTPUT_VERSION}; {fields} }} | ConvertTo-Json -Compress -Depth 4"


# --------------------------------------------------------------------------- observation

_NAMES = [
    "$names = @{}",
    "foreach ($proc in Get-Process) { $names[[int]$proc.Id] = [string]$proc.ProcessName }",
    "function Get-ZgName([int]$id) { if ($names.ContainsKey($id)) { $names[$id] } else { $null } }",
]
_LISTENERS = [
    "$listen = @(Get-NetTCPConnection -State Listen -ErrorAction SilentlyContinue |",
    f"    Select-Object -First {MAX_LISTENERS} | ForEach-Object {{",
    "    [ordered]@{ p = 'tcp'; a = [string]$_.LocalAddress; port = [int]$_.LocalPort;"
    " proc = Get-ZgName $_.OwningProcess } })",
    "$listen += @(Get-NetUDPEndpoint -ErrorAction SilentlyContinue |",
    f"    Select-Object -First {MAX_LISTENERS} | ForEach-Object {{",
    "    [ordered]@{ p = 'udp'; a = [string]$_.LocalAddress; port = [int]$_.LocalPort;"
    " proc = Get-ZgName $_.OwningProcess } })",
]


def preflight_script(layout: WindowsLayout = WindowsLayout()) -> str:
    """Firewall service, profiles and their default actions, enabled inbound rules
    outside our group (allow and block), ours, the WinRM listeners and every listener."""
    return _script("preflight", [
        *layout.prelude(),
        *_NAMES,
        "$svc = Get-Service -Name 'MpsSvc' -ErrorAction SilentlyContinue",
        "$service = if ($null -eq $svc) { 'Missing' } else { [string]$svc.Status }",
        "$profiles = @(Get-NetFirewallProfile -PolicyStore ActiveStore | ForEach-Object {",
        "    [ordered]@{ name = [string]$_.Name; enabled = [string]$_.Enabled;",
        "    inbound = [string]$_.DefaultInboundAction; outbound = [string]$_.DefaultOutboundAction } })",
        "$rules = @(Get-NetFirewallRule -Direction Inbound -Enabled True -PolicyStore ActiveStore"
        " -ErrorAction SilentlyContinue)",
        "$ours = @($rules | Where-Object { $_.Group -eq $group }).Count",
        "$allow = @($rules | Where-Object { $_.Group -ne $group -and [string]$_.Action -eq 'Allow' }).Count",
        "$block = @($rules | Where-Object { $_.Group -ne $group -and [string]$_.Action -eq 'Block' }).Count",
        "$winrm = @(Get-WSManInstance -ResourceURI 'winrm/config/listener' -Enumerate"
        " -ErrorAction SilentlyContinue | ForEach-Object {",
        "    [ordered]@{ transport = [string]$_.Transport; port = [int]$_.Port } })",
        *_LISTENERS,
        _json("service = $service; profiles = $profiles; ours = $ours; other_allow = $allow;"
              " other_block = $block; winrm = $winrm; listen = $listen"),
    ])  # fmt: skip


def learning_script() -> str:
    """Listening sockets (TCP and UDP) and established TCP connections with their
    owning process, and the host's addresses: what the learner turns into flows.
    Nothing is changed on the host (Windows needs no learning table)."""
    return _script("learning snapshot", [
        "$ErrorActionPreference = 'Stop'",
        "$ProgressPreference = 'SilentlyContinue'",
        *_NAMES,
        *_LISTENERS,
        "$est = @(Get-NetTCPConnection -State Established -ErrorAction SilentlyContinue |",
        f"    Select-Object -First {MAX_CONNECTIONS} | ForEach-Object {{",
        "    [ordered]@{ la = [string]$_.LocalAddress; lp = [int]$_.LocalPort;"
        " ra = [string]$_.RemoteAddress; rp = [int]$_.RemotePort; proc = Get-ZgName $_.OwningProcess } })",
        "$addr = @(Get-NetIPAddress -ErrorAction SilentlyContinue | ForEach-Object { [string]$_.IPAddress })",
        _json("listen = $listen; est = $est; addr = $addr"),
    ])  # fmt: skip


# --------------------------------------------------------------------------- enforcement


@dataclass(frozen=True)
class WindowsRule:
    """One inbound rule of our group. ``remote`` empty means from anywhere."""

    name: str
    display: str
    action: str  # Allow | Block
    protocol: str  # TCP | UDP
    ports: tuple[str, ...]  # ("80",), ("5000-5010",), ("5985", "5986")
    remote: tuple[str, ...]

    def command(self) -> str:
        remote = ",".join(ps_quote(r) for r in self.remote) if self.remote else "'Any'"
        return (
            f"New-NetFirewallRule -Name {ps_quote(self.name)} -DisplayName {ps_quote(self.display)}"
            f" -Group $group -Direction Inbound -Action {self.action} -Protocol {self.protocol}"
            f" -LocalPort {','.join(map(ps_quote, self.ports))} -RemoteAddress {remote} -Profile Any -Enabled True | Out-Null"
        )


def _overlaps(sources: Sequence[Prefix], managers: Sequence[Prefix]) -> bool:
    if not sources:
        return True
    return any(s.version == m.version and s.overlaps(m) for s in sources for m in managers)


def plan_rules(
    asset: SegmentAsset, servers: Sequence[Address | Prefix], winrm_ports: Sequence[int] = WINRM_PORTS
) -> tuple[WindowsRule, ...] | None:
    """Our group's rules for ``asset`` in its mode (management first), or ``None`` when
    the mode enforces nothing. ``servers``: the segment server's address(es) as the
    asset sees them; ``winrm_ports``: the WinRM ports to keep open from them."""
    if asset.mode not in ("protected", "learning_with_blocks"):
        return None
    name = _checked(_ASSET_NAME, asset.name, "the asset name")
    if not servers:
        raise WindowsPlanError(f"asset {name}: no segment server address to allow WinRM from; refusing")
    ports = sorted({_port(p, "a WinRM port") for p in winrm_ports})
    if not ports:
        raise WindowsPlanError(f"asset {name}: no WinRM port known (run the preflight first)")
    nets = [ipaddress.ip_network(s) for s in (*servers, *asset.jump_hosts)]
    managers: list[Prefix] = [
        *ipaddress.collapse_addresses(n for n in nets if isinstance(n, ipaddress.IPv4Network)),
        *ipaddress.collapse_addresses(n for n in nets if isinstance(n, ipaddress.IPv6Network)),
    ]
    rules = [
        WindowsRule(
            f"{GROUP}-management",
            "zerogate: WinRM from the segment server and jump hosts",
            "Allow",
            "TCP",
            tuple(map(str, ports)),
            tuple(_address_text(m) for m in managers),
        )
    ]
    wanted = "accept" if asset.mode == "protected" else "drop"
    for rule in sorted(asset.rules, key=lambda r: r.rule_id):
        if rule.action != wanted:
            continue
        if wanted == "drop" and _cuts_management(rule, ports, managers):
            raise WindowsPlanError(
                f"asset {name}: deny rule {rule.rule_id} would block WinRM from the segment server or a "
                "jump host (a Windows block rule wins over every allow); narrow its sources or ports"
            )
        rules.append(_windows_rule(rule))
    return tuple(rules)


def _cuts_management(rule: SegmentRule, ports: Sequence[int], managers: Sequence[Prefix]) -> bool:
    if rule.protocol != "tcp" or not any(rule.port_first <= p <= rule.port_last for p in ports):
        return False
    return _overlaps(list(rule.sources), managers)


def _windows_rule(rule: SegmentRule) -> WindowsRule:
    rule_id = rule.rule_id
    if isinstance(rule_id, bool) or not isinstance(rule_id, int) or not 0 <= rule_id < 10**12:
        raise WindowsPlanError("a rule id must be a number 0-999999999999")
    first, last = _port(rule.port_first, "a rule's first port"), _port(rule.port_last, "a rule's last port")
    if last < first:
        raise WindowsPlanError(f"rule {rule_id}: its port range is reversed")
    return WindowsRule(
        f"{GROUP}-rule-{rule_id}",
        f"zerogate rule {rule_id}",
        "Allow" if rule.action == "accept" else "Block",
        rule.protocol.upper(),
        (str(first) if first == last else f"{first}-{last}",),
        tuple(_address_text(s) for s in rule.sources),
    )


_SAVE_DEFAULTS = [
    "if (-not (Test-Path -LiteralPath $defaults)) {",
    "    @(Get-NetFirewallProfile -PolicyStore PersistentStore | ForEach-Object {",
    "        [ordered]@{ name = [string]$_.Name; enabled = [string]$_.Enabled;"
    " inbound = [string]$_.DefaultInboundAction } }) |",
    "        ConvertTo-Json -Compress | Set-Content -LiteralPath $defaults -Encoding UTF8",
    "}",
]
_READ_DEFAULTS = [
    "function Read-ZgDefaults {",
    "    $saved = @(Get-Content -LiteralPath $defaults -Raw | ConvertFrom-Json)",
    "    foreach ($p in $saved) {",
    f"        if (@({', '.join(map(ps_quote, PROFILES))}) -notcontains $p.name -or",
    "            @('Block', 'Allow', 'NotConfigured') -notcontains $p.inbound -or",
    "            @('True', 'False', 'NotConfigured') -notcontains $p.enabled) {",
    "            throw 'defaults.json was not written by zerogate; set the profiles by hand' }",
    "    }",
    "    $saved",
    "}",
]
_TASK_STATE = [
    "function Get-ZgTask { Get-ScheduledTask -TaskName $taskName -TaskPath $taskPath"
    " -ErrorAction SilentlyContinue }",
    "function Remove-ZgTask { if ($null -ne (Get-ZgTask)) {"
    " Unregister-ScheduledTask -TaskName $taskName -TaskPath $taskPath -Confirm:$false } }",
]


def enforce_script(
    asset: SegmentAsset,
    servers: Sequence[Address | Prefix],
    *,
    winrm_ports: Sequence[int] = WINRM_PORTS,
    confirm_after: int = 120,
    layout: WindowsLayout = WindowsLayout(),
) -> str | None:
    """Export the policy, arm the rollback task at now + ``confirm_after`` s, then
    replace our group and set the profiles; all in one script, so one session. An
    error while applying imports the export at once and disarms the task. ``None``
    when the mode enforces nothing (unprotect instead)."""
    rules = plan_rules(asset, servers, winrm_ports)
    if rules is None:
        return None
    if isinstance(confirm_after, bool) or not CONFIRM_MIN <= confirm_after <= CONFIRM_MAX:
        raise WindowsPlanError(f"the confirm deadline must be {CONFIRM_MIN}-{CONFIRM_MAX} s")
    revision = asset.rules_revision
    if isinstance(revision, bool) or not 0 <= revision < 2**63:
        raise WindowsPlanError("the rules revision must be a non-negative number")
    inbound = (
        "-DefaultInboundAction Block" if asset.mode == "protected" else "-DefaultInboundAction $p.inbound"
    )
    return _script(f"asset {asset.name}, mode {asset.mode}, revision {revision}", [
        *layout.prelude(),
        *_READ_DEFAULTS,
        *_TASK_STATE,
        "New-Item -ItemType Directory -Force -Path $dir | Out-Null",
        "# the export is imported by SYSTEM: only SYSTEM and Administrators may write here",
        "& icacls.exe $dir /inheritance:r /grant:r '*S-1-5-18:(OI)(CI)F' '*S-1-5-32-544:(OI)(CI)F' | Out-Null",
        "if ($LASTEXITCODE -ne 0) { throw 'icacls could not restrict the state directory' }",
        "if (Test-Path -LiteralPath $export) { Remove-Item -LiteralPath $export -Force }",
        "& netsh.exe advfirewall export $export | Out-Null",
        "if ($LASTEXITCODE -ne 0) { throw 'netsh advfirewall export failed; nothing was changed' }",
        *_SAVE_DEFAULTS,
        f"$at = (Get-Date).AddSeconds({confirm_after})",
        "$netsh = Join-Path $env:SystemRoot 'System32\\netsh.exe'",
        "$action = New-ScheduledTaskAction -Execute $netsh -Argument ('advfirewall import \"{0}\"' -f $export)",
        "$trigger = New-ScheduledTaskTrigger -Once -At $at",
        "$principal = New-ScheduledTaskPrincipal -UserId 'S-1-5-18' -LogonType ServiceAccount -RunLevel Highest",
        "Register-ScheduledTask -TaskName $taskName -TaskPath $taskPath -Action $action -Trigger $trigger"
        f" -Principal $principal -Description {ps_quote(f'zerogate rollback of revision {revision}')}"
        " -Force | Out-Null",
        "try {",
        "    Get-NetFirewallRule -Group $group -ErrorAction SilentlyContinue | Remove-NetFirewallRule",
        *(f"    {r.command()}" for r in rules),
        "    foreach ($p in Read-ZgDefaults) {",
        f"        Set-NetFirewallProfile -Profile $p.name -Enabled True {inbound}",
        "    }",
        "} catch {",
        "    & netsh.exe advfirewall import $export | Out-Null",
        "    Remove-ZgTask",
        "    throw",
        "}",
        _json(f"applied = {revision}; rules = {len(rules)}; rollback_at = $at.ToUniversalTime().ToString('o')"),
    ])  # fmt: skip


def confirm_script(revision: int, layout: WindowsLayout = WindowsLayout()) -> str:
    """Run over a fresh session: disarm the rollback of ``revision`` and delete the export.
    Prints ``confirm``: ``confirmed``, ``ran`` (too late: the task restored the
    policy), ``missing`` (no task) or ``other`` (the task is another revision's)."""
    if isinstance(revision, bool) or not isinstance(revision, int) or not 0 <= revision < 2**63:
        raise WindowsPlanError("the rules revision must be a non-negative number")
    return _script(f"confirm revision {revision}", [
        *layout.prelude(),
        *_TASK_STATE,
        "$task = Get-ZgTask",
        "if ($null -eq $task) { $state = 'missing' }",
        f"elseif ($task.Description -ne {ps_quote(f'zerogate rollback of revision {revision}')}) {{ $state = 'other' }}",
        "else {",
        "    $task | Disable-ScheduledTask | Out-Null  # no start while we look",
        "    $info = $task | Get-ScheduledTaskInfo",
        "    if ($info.LastRunTime -and $info.LastRunTime.Year -gt 2000) { $state = 'ran' }",
        "    else { Remove-ZgTask; $state = 'confirmed' }",
        "}",
        "if ($state -eq 'confirmed' -and (Test-Path -LiteralPath $export)) {"
        " Remove-Item -LiteralPath $export -Force }",
        _json(f"confirm = $state; revision = {revision}"),
    ])  # fmt: skip


def rollback_script(layout: WindowsLayout = WindowsLayout()) -> str:
    """Restore the exported policy now (a check after the change failed) and disarm the task."""
    return _script("roll back now", [
        *layout.prelude(),
        *_TASK_STATE,
        "$task = Get-ZgTask",
        "if ($null -ne $task) { $task | Disable-ScheduledTask | Out-Null }",
        "if (-not (Test-Path -LiteralPath $export)) { throw 'no policy export to restore' }",
        "& netsh.exe advfirewall import $export | Out-Null",
        "if ($LASTEXITCODE -ne 0) { throw 'netsh advfirewall import failed; the task stays armed' }",
        "Remove-ZgTask",
        "Remove-Item -LiteralPath $export -Force",
        _json("rolled_back = $true"),
    ])  # fmt: skip


def unprotect_script(layout: WindowsLayout = WindowsLayout()) -> str:
    """Disarm a pending rollback (it would bring an old state back), remove our group
    and put the saved profile settings back (idempotent)."""
    return _script("unprotect", [
        *layout.prelude(),
        *_READ_DEFAULTS,
        *_TASK_STATE,
        "Remove-ZgTask",
        "$removed = @(Get-NetFirewallRule -Group $group -ErrorAction SilentlyContinue).Count",
        "Get-NetFirewallRule -Group $group -ErrorAction SilentlyContinue | Remove-NetFirewallRule",
        "$restored = $false",
        "if (Test-Path -LiteralPath $defaults) {",
        "    foreach ($p in Read-ZgDefaults) {",
        "        Set-NetFirewallProfile -Profile $p.name -Enabled $p.enabled -DefaultInboundAction $p.inbound",
        "    }",
        "    Remove-Item -LiteralPath $defaults -Force",
        "    $restored = $true",
        "}",
        "if (Test-Path -LiteralPath $export) { Remove-Item -LiteralPath $export -Force }",
        _json("unprotected = $true; removed = $removed; defaults_restored = $restored"),
    ])  # fmt: skip


def break_glass_script(layout: WindowsLayout = WindowsLayout()) -> str:
    """Unprotect, best effort: every step is tried even when another failed, and the
    errors are printed; with no saved defaults the default inbound action becomes
    ``NotConfigured`` (Windows' own default) so that our ``Block`` cannot stay behind."""
    steps = [
        ("task", "Remove-ZgTask"),
        ("rules", "Get-NetFirewallRule -Group $group -ErrorAction SilentlyContinue | Remove-NetFirewallRule"),
        ("defaults", "if (Test-Path -LiteralPath $defaults) { foreach ($p in Read-ZgDefaults) {"
                     " Set-NetFirewallProfile -Profile $p.name -Enabled $p.enabled"
                     " -DefaultInboundAction $p.inbound }; Remove-Item -LiteralPath $defaults -Force }"
                     f" else {{ Set-NetFirewallProfile -Profile {','.join(PROFILES)}"
                     " -DefaultInboundAction NotConfigured }"),
        ("export", "if (Test-Path -LiteralPath $export) { Remove-Item -LiteralPath $export -Force }"),
    ]  # fmt: skip
    body = [f"try {{ {cmd} }} catch {{ $errors += {ps_quote(name)} }}" for name, cmd in steps]
    return _script("break-glass", [
        *layout.prelude(),
        *_READ_DEFAULTS,
        *_TASK_STATE,
        "$errors = @()",
        *body,
        _json("unprotected = ($errors.Count -eq 0); failed = $errors"),
    ])  # fmt: skip
