# zerogate segment: learning snapshot
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
$names = @{}
foreach ($proc in Get-Process) { $names[[int]$proc.Id] = [string]$proc.ProcessName }
function Get-ZgName([int]$id) { if ($names.ContainsKey($id)) { $names[$id] } else { $null } }
$listen = @(Get-NetTCPConnection -State Listen -ErrorAction SilentlyContinue |
    Select-Object -First 4096 | ForEach-Object {
    [ordered]@{ p = 'tcp'; a = [string]$_.LocalAddress; port = [int]$_.LocalPort; proc = Get-ZgName $_.OwningProcess } })
$listen += @(Get-NetUDPEndpoint -ErrorAction SilentlyContinue |
    Select-Object -First 4096 | ForEach-Object {
    [ordered]@{ p = 'udp'; a = [string]$_.LocalAddress; port = [int]$_.LocalPort; proc = Get-ZgName $_.OwningProcess } })
$est = @(Get-NetTCPConnection -State Established -ErrorAction SilentlyContinue |
    Select-Object -First 65536 | ForEach-Object {
    [ordered]@{ la = [string]$_.LocalAddress; lp = [int]$_.LocalPort; ra = [string]$_.RemoteAddress; rp = [int]$_.RemotePort; proc = Get-ZgName $_.OwningProcess } })
$addr = @(Get-NetIPAddress -ErrorAction SilentlyContinue | ForEach-Object { [string]$_.IPAddress })
[ordered]@{ v = 1; listen = $listen; est = $est; addr = $addr } | ConvertTo-Json -Compress -Depth 4
