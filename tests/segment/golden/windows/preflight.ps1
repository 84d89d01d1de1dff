# zerogate segment: preflight
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
$group = 'zerogate-segment'
$dir = 'C:\ProgramData\zerogate\segment'
$export = Join-Path $dir 'rollback.wfw'
$defaults = Join-Path $dir 'defaults.json'
$taskName = 'zerogate-segment-rollback'
$taskPath = '\zerogate\'
$names = @{}
foreach ($proc in Get-Process) { $names[[int]$proc.Id] = [string]$proc.ProcessName }
function Get-ZgName([int]$id) { if ($names.ContainsKey($id)) { $names[$id] } else { $null } }
$svc = Get-Service -Name 'MpsSvc' -ErrorAction SilentlyContinue
$service = if ($null -eq $svc) { 'Missing' } else { [string]$svc.Status }
$profiles = @(Get-NetFirewallProfile -PolicyStore ActiveStore | ForEach-Object {
    [ordered]@{ name = [string]$_.Name; enabled = [string]$_.Enabled;
    inbound = [string]$_.DefaultInboundAction; outbound = [string]$_.DefaultOutboundAction } })
$rules = @(Get-NetFirewallRule -Direction Inbound -Enabled True -PolicyStore ActiveStore -ErrorAction SilentlyContinue)
$ours = @($rules | Where-Object { $_.Group -eq $group }).Count
$allow = @($rules | Where-Object { $_.Group -ne $group -and [string]$_.Action -eq 'Allow' }).Count
$block = @($rules | Where-Object { $_.Group -ne $group -and [string]$_.Action -eq 'Block' }).Count
$winrm = @(Get-WSManInstance -ResourceURI 'winrm/config/listener' -Enumerate -ErrorAction SilentlyContinue | ForEach-Object {
    [ordered]@{ transport = [string]$_.Transport; port = [int]$_.Port } })
$listen = @(Get-NetTCPConnection -State Listen -ErrorAction SilentlyContinue |
    Select-Object -First 4096 | ForEach-Object {
    [ordered]@{ p = 'tcp'; a = [string]$_.LocalAddress; port = [int]$_.LocalPort; proc = Get-ZgName $_.OwningProcess } })
$listen += @(Get-NetUDPEndpoint -ErrorAction SilentlyContinue |
    Select-Object -First 4096 | ForEach-Object {
    [ordered]@{ p = 'udp'; a = [string]$_.LocalAddress; port = [int]$_.LocalPort; proc = Get-ZgName $_.OwningProcess } })
[ordered]@{ v = 1; service = $service; profiles = $profiles; ours = $ours; other_allow = $allow; other_block = $block; winrm = $winrm; listen = $listen } | ConvertTo-Json -Compress -Depth 4
