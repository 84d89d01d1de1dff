# zerogate segment: unprotect
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
Remove-ZgTask
$removed = @(Get-NetFirewallRule -Group $group -ErrorAction SilentlyContinue).Count
Get-NetFirewallRule -Group $group -ErrorAction SilentlyContinue | Remove-NetFirewallRule
$restored = $false
if (Test-Path -LiteralPath $defaults) {
    foreach ($p in Read-ZgDefaults) {
        Set-NetFirewallProfile -Profile $p.name -Enabled $p.enabled -DefaultInboundAction $p.inbound
    }
    Remove-Item -LiteralPath $defaults -Force
    $restored = $true
}
if (Test-Path -LiteralPath $export) { Remove-Item -LiteralPath $export -Force }
[ordered]@{ v = 1; unprotected = $true; removed = $removed; defaults_restored = $restored } | ConvertTo-Json -Compress -Depth 4
