# zerogate segment: asset win1, mode learning_with_blocks, revision 12
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
$group = 'zerogate-segment'
$dir = 'C:\ProgramData\zerogate\segment'
$export = Join-Path $dir 'rollback.wfw'
$defaults = Join-Path $dir 'defaults.json'
$taskName = 'zerogate-segment-rollback'
$taskPath = '\zerogate\'
function Read-ZgDefaults {
    $saved = @(Get-Content -LiteralPath $defaults -Raw | ConvertFrom-Json)
    foreach ($p in $saved) {
        if (@('Domain', 'Private', 'Public') -notcontains $p.name -or
            @('Block', 'Allow', 'NotConfigured') -notcontains $p.inbound -or
            @('True', 'False', 'NotConfigured') -notcontains $p.enabled) {
            throw 'defaults.json was not written by zerogate; set the profiles by hand' }
    }
    $saved
}
function Get-ZgTask { Get-ScheduledTask -TaskName $taskName -TaskPath $taskPath -ErrorAction SilentlyContinue }
function Remove-ZgTask { if ($null -ne (Get-ZgTask)) { Unregister-ScheduledTask -TaskName $taskName -TaskPath $taskPath -Confirm:$false } }
New-Item -ItemType Directory -Force -Path $dir | Out-Null
# the export is imported by SYSTEM: only SYSTEM and Administrators may write here
& icacls.exe $dir /inheritance:r /grant:r '*S-1-5-18:(OI)(CI)F' '*S-1-5-32-544:(OI)(CI)F' | Out-Null
if ($LASTEXITCODE -ne 0) { throw 'icacls could not restrict the state directory' }
if (Test-Path -LiteralPath $export) { Remove-Item -LiteralPath $export -Force }
& netsh.exe advfirewall export $export | Out-Null
if ($LASTEXITCODE -ne 0) { throw 'netsh advfirewall export failed; nothing was changed' }
if (-not (Test-Path -LiteralPath $defaults)) {
    @(Get-NetFirewallProfile -PolicyStore PersistentStore | ForEach-Object {
        [ordered]@{ name = [string]$_.Name; enabled = [string]$_.Enabled; inbound = [string]$_.DefaultInboundAction } }) |
        ConvertTo-Json -Compress | Set-Content -LiteralPath $defaults -Encoding UTF8
}
$at = (Get-Date).AddSeconds(120)
$netsh = Join-Path $env:SystemRoot 'System32\netsh.exe'
$action = New-ScheduledTaskAction -Execute $netsh -Argument ('advfirewall import "{0}"' -f $export)
$trigger = New-ScheduledTaskTrigger -Once -At $at
$principal = New-ScheduledTaskPrincipal -UserId 'S-1-5-18' -LogonType ServiceAccount -RunLevel Highest
Register-ScheduledTask -TaskName $taskName -TaskPath $taskPath -Action $action -Trigger $trigger -Principal $principal -Description 'zerogate rollback of revision 12' -Force | Out-Null
try {
    Get-NetFirewallRule -Group $group -ErrorAction SilentlyContinue | Remove-NetFirewallRule
    New-NetFirewallRule -Name 'zerogate-segment-management' -DisplayName 'zerogate: WinRM from the segment server and jump hosts' -Group $group -Direction Inbound -Action Allow -Protocol TCP -LocalPort '5985','5986' -RemoteAddress '10.99.0.1','198.51.100.0/24','fd99::1' -Profile Any -Enabled True | Out-Null
    New-NetFirewallRule -Name 'zerogate-segment-rule-9' -DisplayName 'zerogate rule 9' -Group $group -Direction Inbound -Action Block -Protocol TCP -LocalPort '23' -RemoteAddress '192.0.2.0/24' -Profile Any -Enabled True | Out-Null
    foreach ($p in Read-ZgDefaults) {
        Set-NetFirewallProfile -Profile $p.name -Enabled True -DefaultInboundAction $p.inbound
    }
} catch {
    & netsh.exe advfirewall import $export | Out-Null
    Remove-ZgTask
    throw
}
[ordered]@{ v = 1; applied = 12; rules = 2; rollback_at = $at.ToUniversalTime().ToString('o') } | ConvertTo-Json -Compress -Depth 4
