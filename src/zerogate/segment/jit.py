"""Just-in-time openings on a protected asset's own firewall, over SSH.

An opening is one element ``source . protocol . port`` of the table's ``jit4`` /
``jit6`` set (:mod:`zerogate.segment.plan`) with a *kernel* timeout: the host closes
it by itself at expiry, whether or not this server or the controller still runs.
The server's part is only to add an opening at once (the listener, on a granted
request) and to delete one early when it leaves the snapshot (revoked).

Every change is one ``nft -f -`` on stdin through the asset's SSH session (the
sudoers line already allows it), written so that it never fails on what the kernel
may have done meanwhile: nft 1.0.6 (Debian 12) has no ``destroy element`` and a
``delete`` of a missing element is an error, while ``add`` of a present one is not.
So a *set* is ``add`` (1 s) / ``delete`` / ``add`` (the real timeout) -- an existing
element gets exactly the new timeout -- and a *removal* is ``add`` (1 s) / ``delete``,
all in one transaction.

:class:`JitKeeper` keeps each protected asset's elements in line with the snapshot:
after each enforcement (which reloads the table; the daemon calls
:meth:`JitKeeper.reloaded`, also the first time after a restart) it lists the table (``nft list table inet zerogate_segment``, also in the sudoers line),
then adds what is missing and deletes what the snapshot no longer holds, so a
revocation made while this server was down is applied when it comes back.

Errors: the SSH and backend errors of :mod:`zerogate.segment.ssh`
(``FirewallApplyError``); :class:`JitKeeper` logs them and tries again later.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from zerogate.deploy.firewall.errors import FirewallApplyError
from zerogate.model import nft
from zerogate.model.snapshot import JitOpening, SegmentAsset
from zerogate.segment.plan import TABLE_FAMILY, TABLE_NAME, jit_key, jit_set_name, remaining_seconds
from zerogate.segment.ssh import NFT, Access, AssetTarget

log = logging.getLogger(__name__)

GRANT_GRACE = 120.0  # seconds a granted opening is kept while the snapshot does not list it yet
RETRY_AFTER = 10.0  # seconds before a failed asset is tried again
# One element as ``nft list`` prints it: ``10.0.0.5 . tcp . 22 timeout 1h expires 59m58s``.
_ELEMENT = re.compile(r"([0-9A-Fa-f:.]+) \. (tcp|udp) \. ([0-9]{1,5})\b")
_SET_BLOCK = re.compile(r"set (jit4|jit6) \{(.*?)\n\t\}", re.S)

Key = tuple[str, str]  # (set name, "source . proto . port")


def key_of(opening: JitOpening) -> Key:
    return jit_set_name(opening), jit_key(opening)


def _update(verb: str, set_name: str, element: str) -> str:
    return nft.element_update(verb, TABLE_FAMILY, TABLE_NAME, set_name, [element]) + "\n"


def change_script(to_set: Iterable[JitOpening], to_remove: Iterable[Key], now: datetime) -> str:
    """One ``nft -f`` transaction: each of ``to_set`` present with exactly its remaining
    timeout (expired ones are removed instead), each of ``to_remove`` absent; safe
    whether or not the elements exist (see the module)."""
    lines: list[str] = []
    removals = dict.fromkeys(to_remove)
    for o in to_set:
        seconds = remaining_seconds(o, now)
        set_name, key = key_of(o)
        if seconds <= 0:
            removals[(set_name, key)] = None
            continue
        lines += [
            _update("add", set_name, f"{key} timeout 1s"),
            _update("delete", set_name, key),
            _update("add", set_name, f"{key} timeout {seconds}s"),
        ]
    for set_name, key in removals:
        lines += [_update("add", set_name, f"{key} timeout 1s"), _update("delete", set_name, key)]
    return "".join(lines)


def parse_elements(listing: str) -> set[Key]:
    """The elements of ``jit4`` / ``jit6`` in ``nft list table`` output (expired ones are
    not listed by the kernel)."""
    found: set[Key] = set()
    for set_name, block in _SET_BLOCK.findall(listing):
        for source, proto, port in _ELEMENT.findall(block):
            found.add((set_name, nft.concat(source, proto, port)))
    return found


def apply_changes(
    asset: SegmentAsset,
    access: Access,
    to_set: Sequence[JitOpening],
    to_remove: Iterable[Key] = (),
    now: datetime | None = None,
) -> None:
    """Set and remove elements on the asset in one ``nft -f -`` (one SSH session)."""
    script = change_script(to_set, to_remove, now or datetime.now(UTC))
    if script:
        with AssetTarget(asset, access) as target:
            target.checked([NFT, "-f", "-"], "changing the just-in-time openings", script)


def list_elements(asset: SegmentAsset, access: Access) -> set[Key]:
    """The asset's current openings (one SSH session)."""
    with AssetTarget(asset, access) as target:
        listing = target.checked([NFT, "list", "table", TABLE_FAMILY, TABLE_NAME], "listing the table")
    return parse_elements(listing)


@dataclass
class _Grant:
    asset_id: int
    opening: JitOpening
    at: float


class JitKeeper:
    """Keeps the protected assets' openings in line with the snapshot (see the module);
    thread-safe: the listener's :meth:`grant` and the loop's :meth:`sync` may overlap."""

    def __init__(self, access: Access | None) -> None:
        self.access = access
        self.lock = threading.Lock()
        self.asset_locks: dict[int, threading.Lock] = {}
        self.assets: dict[int, SegmentAsset] = {}
        self.applied: dict[int, dict[Key, datetime]] = {}  # what this keeper last put on each host
        self.granted: dict[int, _Grant] = {}  # opening id -> granted here, maybe not in a snapshot yet
        self.retry_at: dict[int, float] = {}
        self.enforced: set[int] = set()  # assets whose table this process loaded (see reloaded)
        self.wake = threading.Event()

    def update(self, assets: Iterable[SegmentAsset]) -> None:
        """A new snapshot: the loop syncs every asset whose openings changed."""
        with self.lock:
            self.assets = {a.asset_id: a for a in assets}
            listed = {o.opening_id for a in self.assets.values() for o in a.jit_openings}
            now = time.monotonic()
            self.granted = {
                i: g for i, g in self.granted.items() if i not in listed and now - g.at < GRANT_GRACE
            }
            protected = {i for i, a in self.assets.items() if a.mode == "protected"}
            self.enforced &= protected
            for gone in set(self.applied) - protected:
                del self.applied[gone]
        self.wake.set()

    def find(self, name: str) -> SegmentAsset | None:
        """The asset called ``name`` (case-insensitive) in the last snapshot."""
        with self.lock:
            return next((a for a in self.assets.values() if a.name.casefold() == name.casefold()), None)

    def reloaded(self, asset_id: int) -> None:
        """The daemon (re)loaded the asset's table: list it, then keep it in line from now on."""
        with self.lock:
            self.enforced.add(asset_id)
            self.applied.pop(asset_id, None)
            self.retry_at.pop(asset_id, None)
        self.wake.set()

    def _lock_of(self, asset_id: int) -> threading.Lock:
        with self.lock:
            return self.asset_locks.setdefault(asset_id, threading.Lock())

    def grant(self, asset: SegmentAsset, opening: JitOpening) -> None:
        """Open ``opening`` on ``asset`` at once (the controller approved it); raises on failure."""
        if self.access is None:
            raise FirewallApplyError("no SSH access configured for just-in-time openings")
        with self.lock:
            self.granted[opening.opening_id] = _Grant(asset.asset_id, opening, time.monotonic())
        with self._lock_of(asset.asset_id):
            apply_changes(asset, self.access, [opening])
            with self.lock:
                applied = self.applied.get(asset.asset_id)
                if applied is not None:
                    applied[key_of(opening)] = opening.expires_at

    def wanted(self, asset: SegmentAsset, now: datetime) -> dict[Key, JitOpening]:
        """The openings the asset must hold now: the snapshot's and the recent grants
        (latest expiry per element); none unless its mode is protected."""
        if asset.mode != "protected":
            return {}
        with self.lock:
            extra = [g.opening for g in self.granted.values() if g.asset_id == asset.asset_id]
        out: dict[Key, JitOpening] = {}
        for o in [*asset.jit_openings, *extra]:
            k = key_of(o)
            if o.expires_at > now and (k not in out or o.expires_at > out[k].expires_at):
                out[k] = o
        return out

    def sync(self, asset: SegmentAsset, now: datetime | None = None) -> bool:
        """Bring one asset in line; whether it changed anything on the host."""
        if self.access is None or asset.mode != "protected":
            return False
        now = now or datetime.now(UTC)
        with self._lock_of(asset.asset_id):
            wanted = self.wanted(asset, now)
            with self.lock:
                known = self.applied.get(asset.asset_id)
            if known is None:  # first sight or reloaded: what is there keeps its timeout
                present = list_elements(asset, self.access)
                to_set = [o for k, o in wanted.items() if k not in present]
                to_remove = [k for k in present if k not in wanted]
            else:  # the kernel removed the expired ones by itself
                to_set = [o for k, o in wanted.items() if known.get(k) != o.expires_at]
                to_remove = [k for k, exp in known.items() if k not in wanted and exp > now]
            apply_changes(asset, self.access, to_set, to_remove, now)
            with self.lock:
                self.applied[asset.asset_id] = {k: o.expires_at for k, o in wanted.items()}
        if to_set or to_remove:
            log.info(
                "asset %s: %d just-in-time opening(s) set, %d removed",
                asset.name,
                len(to_set),
                len(to_remove),
            )
        return bool(to_set or to_remove)

    def sync_all(self) -> None:
        """Sync every protected asset whose table is loaded (each failure logged, tried again
        after a pause)."""
        with self.lock:
            assets = [a for i, a in self.assets.items() if i in self.enforced]
        now = time.monotonic()
        for asset in assets:
            if asset.mode != "protected" or self.retry_at.get(asset.asset_id, 0.0) > now:
                continue
            try:
                self.sync(asset)
                self.retry_at.pop(asset.asset_id, None)
            except FirewallApplyError as exc:
                self.retry_at[asset.asset_id] = now + RETRY_AFTER
                log.warning("asset %s: just-in-time openings not synced: %s", asset.name, exc)

    def loop(self, stop: threading.Event, tick: float = 1.0) -> None:
        """Until ``stop``: sync at once after a snapshot or a reload, and every ``tick``."""
        while not stop.is_set():
            self.wake.clear()
            self.sync_all()
            self.wake.wait(tick)
