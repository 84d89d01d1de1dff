# zerogate segment: roll back now
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
$group = 'zerogate-segment'
$dir = 'C:\ProgramData\zerogate\segment'
$export = Join-Path $dir 'rollback.wfw'
$defaults = Join-Path $dir 'defaults.json'
$taskName = 'zerogate-segment-rollback'
$taskPath = '\zerogate\'
function Get-ZgTask { Get-ScheduledTask -TaskName $taskName -TaskPath $taskPath -ErrorAction SilentlyContinue }
function Remove-ZgTask { if ($null -ne (Get-ZgTask)) { Unregister-ScheduledTask -TaskName $taskName -TaskPath $taskPath -Confirm:$false } }
$task = Get-ZgTask
if ($null -ne $task) { $task | Disable-ScheduledTask | Out-Null }
if (-not (Test-Path -LiteralPath $export)) { throw 'no policy export to restore' }
& netsh.exe advfirewall import $export | Out-Null
if ($LASTEXITCODE -ne 0) { throw 'netsh advfirewall import failed; the task stays armed' }
Remove-ZgTask
Remove-Item -LiteralPath $export -Force
[ordered]@{ v = 1; rolled_back = $true } | ConvertTo-Json -Compress -Depth 4
