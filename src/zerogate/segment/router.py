"""One :class:`~zerogate.segment.reconcile.HostOps` for a mixed estate: each call goes to the
Linux backend (``SshHostOps``, SSH) or the Windows one (:class:`~.windows.winrm.WinRmHostOps`,
WinRM) by the asset's ``os``, so the daemon, the reconcile loop and the reports stay the
same for both.

The Windows backend is optional: a server with no ``winrm_password_file`` has none, and
then each Windows asset fails with :class:`WindowsNotConfigured` (its state says what to
set) while the Linux assets go on untouched. WinRM logs in as the asset's own account
(its ``ssh_user``) with the server's one password (:func:`per_asset_account`).

Errors: :class:`WindowsNotConfigured` (a ``SegmentHostError``) besides the backends' own.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import replace

from zerogate.agent.settings import ConfigError, SegmentSettings
from zerogate.model.segment import Address
from zerogate.model.snapshot import X509_PIN, SegmentAsset
from zerogate.segment.hosts import Collection, Enforcement, ScannedKey, SegmentHostError
from zerogate.segment.preflight import Preflight
from zerogate.segment.reconcile import HostOps
from zerogate.segment.windows.winrm import SessionFactory, WinRmAccess, WinRmHostOps, pypsrp_session

NO_WINDOWS = (
    "this segment server has no WinRM account password (winrm_password_file in segment.toml); "
    "set it (a 0600 file) and restart the server"
)


class WindowsNotConfigured(SegmentHostError):
    """A Windows asset, but this server cannot manage Windows assets (the message says why)."""


def per_asset_account(factory: SessionFactory = pypsrp_session) -> SessionFactory:
    """A session factory logging in as each asset's account (``ssh_user``): the server keeps
    one password, the admin names the account per asset (``--user``)."""
    return lambda asset, access: factory(asset, replace(access, username=asset.ssh_user))


def windows_ops(
    settings: SegmentSettings,
    servers: Callable[[SegmentAsset], Sequence[Address]],
    factory: SessionFactory = pypsrp_session,
) -> tuple[WinRmHostOps | None, str]:
    """The Windows backend the settings make, or None and why not (never raises: a bad
    WinRM setting must not stop the Linux assets)."""
    try:
        password = settings.winrm_password()
    except ConfigError as exc:
        return None, f"{exc}; fix it and restart the server"
    if password is None:
        return None, NO_WINDOWS
    access = WinRmAccess(
        "zerogate-segment",  # replaced by each asset's account (per_asset_account)
        password,
        auth=settings.winrm_auth,
        transport=settings.winrm_transport,
    )
    ops = WinRmHostOps(
        access,
        servers=servers,
        session_factory=per_asset_account(factory),
        check_timeout=settings.check_timeout,
    )
    return ops, ""


class HostOpsRouter:
    """:class:`~zerogate.segment.reconcile.HostOps` routing by ``asset.os`` (see the module)."""

    def __init__(self, linux: HostOps, windows: WinRmHostOps | None, why_not: str = NO_WINDOWS) -> None:
        self.linux = linux
        self.windows = windows
        self.why_not = why_not  # shown for Windows assets when ``windows`` is None

    def _windows(self, asset: SegmentAsset) -> WinRmHostOps:
        if self.windows is None:
            raise WindowsNotConfigured(f"{asset.name} is a Windows asset, but {self.why_not}")
        port = self.windows.access.port
        if asset.ssh_port != port:  # the backend dials the transport's port
            raise WindowsNotConfigured(
                f"{asset.name}: WinRM port {asset.ssh_port}, but winrm_transport "
                f"{self.windows.access.transport} uses {port}; add the asset with --port {port}"
            )
        return self.windows

    def _of(self, asset: SegmentAsset) -> HostOps:
        return self._windows(asset) if asset.os == "windows" else self.linux

    def scan_host_key(self, asset: SegmentAsset) -> ScannedKey:
        scanned = self._of(asset).scan_host_key(asset)
        if asset.os == "windows" and not re.fullmatch(X509_PIN, scanned.key):
            # WinRM over HTTP has no certificate: nothing the controller could pin
            raise WindowsNotConfigured(
                f"{asset.name}: winrm_transport http offers no certificate to pin, and an asset is "
                'managed only once a key is trusted; use winrm_transport = "https" (port 5986)'
            )
        return scanned

    def preflight(self, asset: SegmentAsset) -> Preflight:
        return self._of(asset).preflight(asset)

    def start_learning(self, asset: SegmentAsset) -> None:
        self._of(asset).start_learning(asset)

    def stop_learning(self, asset: SegmentAsset) -> None:
        self._of(asset).stop_learning(asset)

    def collect(self, asset: SegmentAsset, outbound: bool) -> Collection:
        return self._of(asset).collect(asset, outbound)

    def enforce(self, asset: SegmentAsset, preflight: Preflight) -> Enforcement:
        return self._of(asset).enforce(asset, preflight)

    def unprotect(self, asset: SegmentAsset) -> None:
        self._of(asset).unprotect(asset)

    def retain(self, asset_ids: AbstractSet[int]) -> None:
        self.linux.retain(asset_ids)
        if self.windows is not None:
            self.windows.retain(asset_ids)
