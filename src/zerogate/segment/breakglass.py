"""Break-glass: take enforcement off many assets at once, with no controller.

The segment server keeps its last inventory (the assets of the controller's
snapshot, host keys and logins included) in a local file; :func:`break_glass`
works from that file and the server's own key only, so it works while the
controller is down. Each Linux asset is one :func:`zerogate.segment.hosts.unprotect`
(idempotent: our table goes, no other table is touched), each Windows asset one
:meth:`~zerogate.segment.windows.winrm.WinRmHostOps.break_glass` (our firewall rules
and rollback task go, best effort; it needs the WinRM settings), run concurrently with a
bound on the sessions open at once; one unreachable host does not stop the
others, and each result says what happened.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from zerogate.deploy.firewall.errors import FirewallApplyError
from zerogate.model.snapshot import SegmentAsset
from zerogate.segment.hosts import unprotect
from zerogate.segment.ssh import Access
from zerogate.segment.windows.winrm import WinRmHostOps

DEFAULT_PARALLEL = 32
INVENTORY = "inventory.json"  # in the server's state directory: the assets, cached for break-glass


class InventoryError(FirewallApplyError):
    """The cached inventory cannot be read; the message says which file and why."""


@dataclass(frozen=True)
class BreakGlassResult:
    asset_id: int
    name: str
    ok: bool
    detail: str


def save_inventory(path: Path, assets: Iterable[SegmentAsset]) -> None:
    """Write the inventory atomically (0600): the assets as the snapshot had them."""
    data = {"assets": [a.model_dump(mode="json") for a in assets]}
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def load_inventory(path: Path) -> tuple[SegmentAsset, ...]:
    try:
        data = json.loads(path.read_text())
        return tuple(SegmentAsset.model_validate(a) for a in data["assets"])
    except (OSError, ValueError, KeyError, TypeError, ValidationError) as exc:
        raise InventoryError(f"cannot read the cached inventory {path}: {exc}") from None


@dataclass(frozen=True)
class WindowsBreakGlass:
    """How break-glass reaches Windows assets: the WinRM backend, or None and why not."""

    ops: WinRmHostOps | None
    why_not: str = "no WinRM settings (winrm_password_file) on this server"


def _one(asset: SegmentAsset, access: Access, windows: WindowsBreakGlass) -> BreakGlassResult:
    def result(ok: bool, detail: str) -> BreakGlassResult:
        return BreakGlassResult(asset.asset_id, asset.name, ok, detail)

    try:
        if asset.os == "windows":
            if windows.ops is None:
                return result(False, f"Windows asset, but {windows.why_not}")
            failed = windows.ops.break_glass(asset)
            if failed:
                return result(False, f"steps that failed on the host: {', '.join(failed)}"[:500])
        else:
            unprotect(asset, access)
    except FirewallApplyError as exc:
        return result(False, str(exc))
    return result(True, "enforcement removed")


def break_glass(
    assets: Sequence[SegmentAsset],
    access: Access,
    parallel: int = DEFAULT_PARALLEL,
    windows: WindowsBreakGlass | None = None,
) -> list[BreakGlassResult]:
    """Unprotect every asset, at most ``parallel`` at a time; results in the assets' order."""
    if not assets:
        return []
    win = windows or WindowsBreakGlass(None)
    with ThreadPoolExecutor(max_workers=max(1, min(parallel, len(assets)))) as pool:
        return list(pool.map(lambda a: _one(a, access, win), assets))


def break_glass_from_inventory(
    path: Path,
    access: Access,
    names: Sequence[str] | None = None,
    parallel: int = DEFAULT_PARALLEL,
    windows: WindowsBreakGlass | None = None,
) -> list[BreakGlassResult]:
    """Break-glass for the named assets of the cached inventory (all when ``names`` is None)."""
    assets = load_inventory(path)
    if names is not None:
        unknown = sorted(set(names) - {a.name for a in assets})
        if unknown:
            raise InventoryError(f"not in the cached inventory {path}: {', '.join(unknown)}")
        assets = tuple(a for a in assets if a.name in names)
    return break_glass(assets, access, parallel, windows)
