# zerogate segment: confirm revision 12
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
if ($null -eq $task) { $state = 'missing' }
elseif ($task.Description -ne 'zerogate rollback of revision 12') { $state = 'other' }
else {
    $task | Disable-ScheduledTask | Out-Null  # no start while we look
    $info = $task | Get-ScheduledTaskInfo
    if ($info.LastRunTime -and $info.LastRunTime.Year -gt 2000) { $state = 'ran' }
    else { Remove-ZgTask; $state = 'confirmed' }
}
if ($state -eq 'confirmed' -and (Test-Path -LiteralPath $export)) { Remove-Item -LiteralPath $export -Force }
[ordered]@{ v = 1; confirm = $state; revision = 12 } | ConvertTo-Json -Compress -Depth 4
