"""Windows segment assets: PowerShell rendered from typed values (:mod:`.render`), its JSON
output parsed (:mod:`.parse`), and a WinRM :class:`~zerogate.segment.reconcile.HostOps`
backend (:mod:`.winrm`)."""
