"""``zerogate segment run``: follow the controller's segment snapshot, bring each
asset to its mode (over SSH; Windows over WinRM, :mod:`.router`), and report what they show.

Wiring only; the decisions are :mod:`zerogate.segment.reconcile`'s. Threads:

- the snapshot follower (main thread): each snapshot replaces the asset list and
  is saved as the break-glass inventory (:func:`~zerogate.segment.breakglass.save_inventory`);
- the round loop: every tick (and at once after a snapshot) each idle asset's
  steps are decided and handed to a pool of ``max_ssh`` threads, one operation in
  flight per asset, so a slow or failing host never holds the others up;
- the report loop: POSTs the :class:`~zerogate.model.segment_report.SegmentReport`
  soon after a change and every ``report_interval`` seconds otherwise; learned
  flows leave the memory only when the controller took them;
- with a directory, the directory loop: reads the monitored group every
  ``sync_interval`` (its members go into the report) and keeps the protected
  group in line with the assets that are enforced in mode protected.

Stopping leaves every host as it is (enforcement is never removed on exit;
``zerogate segment break-glass`` does that).
"""

from __future__ import annotations

import functools
import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from concurrent.futures import Future, ThreadPoolExecutor
from ipaddress import ip_address
from typing import Protocol

from pydantic import ValidationError

from zerogate.agent.follower import SnapshotFollower
from zerogate.agent.state import DeviceIdentity
from zerogate.model.segment import Address, Flow
from zerogate.model.segment_report import (
    MAX_ASSETS_PER_REPORT,
    MAX_DIRECTORY_COMPUTERS,
    AssetReport,
    DirectoryComputer,
    SegmentReport,
)
from zerogate.model.snapshot import RevokedSnapshot, SegmentAsset, SegmentSnapshot
from zerogate.netops.controller_api import ControllerError
from zerogate.netops.ldap import Computer, DirectoryError, MonitoredRead, dn_key
from zerogate.policy.segment import merge
from zerogate.segment import hosts
from zerogate.segment.breakglass import INVENTORY, save_inventory
from zerogate.segment.events import PENDING_MAX, EventStreams
from zerogate.segment.hosts import Collection, Enforcement, ScannedKey
from zerogate.segment.jit import JitKeeper
from zerogate.segment.jit_listener import start_listener
from zerogate.segment.preflight import Preflight
from zerogate.segment.reconcile import (
    FLOW_LIMIT,
    AssetMemory,
    HostOps,
    Step,
    asset_report,
    decide,
    execute,
    remember,
)
from zerogate.segment.ssh import Access

log = logging.getLogger(__name__)

REPORT_PATH = "/v1/segment/report"
MAX_FLOWS_PER_REPORT = 20000  # a report body stays a few MB at most
REPORT_DEBOUNCE = 0.5  # seconds: changes close together go in one report


class DirectoryLike(Protocol):
    """What the daemon uses of :class:`zerogate.netops.ldap.Directory`."""

    def read_monitored(self) -> MonitoredRead: ...
    def protected_members(self) -> tuple[str, ...]: ...
    def find_computers(self, name: str) -> tuple[Computer, ...]: ...
    def add_protected(self, dn: str) -> bool: ...
    def remove_protected(self, dn: str) -> bool: ...


def source_address(target: Address, port: int) -> Address:
    """The local address this host uses to reach ``target`` (what the asset sees us come
    from): a connected UDP socket sends nothing but has the route's source address."""
    family = socket.AF_INET6 if target.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.connect((str(target), port))
        return ip_address(s.getsockname()[0])


class SshHostOps:
    """:class:`~zerogate.segment.reconcile.HostOps` over SSH (:mod:`zerogate.segment.hosts`);
    while an asset learns, its conntrack event stream runs too (``events``,
    :mod:`zerogate.segment.events`) and each collect merges it with the snapshot."""

    def __init__(
        self,
        access: Access,
        *,
        check_timeout: float = hosts.CHECK_TIMEOUT,
        events: bool = True,
        events_pending: int = PENDING_MAX,
    ) -> None:
        self.access = access
        self.check_timeout = check_timeout
        self.streams = EventStreams(access, cap=events_pending) if events else None

    def scan_host_key(self, asset: SegmentAsset) -> ScannedKey:
        return hosts.scan_host_key(asset)

    def preflight(self, asset: SegmentAsset) -> Preflight:
        return hosts.preflight(asset, self.access)

    def start_learning(self, asset: SegmentAsset) -> None:
        hosts.start_learning(asset, self.access)  # the table first: conntrack then tracks
        if self.streams is not None:
            self.streams.ensure(asset)

    def stop_learning(self, asset: SegmentAsset) -> None:
        if self.streams is not None:
            self.streams.stop(asset.asset_id)  # before the table goes: a restart would load it again
        hosts.stop_learning(asset, self.access)

    def collect(self, asset: SegmentAsset, outbound: bool) -> Collection:
        ledger = None if self.streams is None else self.streams.ensure(asset)
        return hosts.collect(asset, self.access, outbound=outbound, events=ledger)

    def enforce(self, asset: SegmentAsset, preflight: Preflight) -> Enforcement:
        servers = [source_address(asset.address, asset.ssh_port)]
        return hosts.enforce(
            asset,
            self.access,
            servers,
            ssh_ports=preflight.ssh_ports,
            listeners=preflight.listeners,
            check_timeout=self.check_timeout,
        )

    def unprotect(self, asset: SegmentAsset) -> None:
        hosts.unprotect(asset, self.access)

    def retain(self, asset_ids: AbstractSet[int]) -> None:
        if self.streams is not None:
            self.streams.retain(asset_ids)


class SegmentDaemon:
    def __init__(
        self,
        identity: DeviceIdentity,
        ops: HostOps,
        *,
        max_ssh: int = 32,
        collect_interval: float = 60.0,
        report_interval: float = 30.0,
        watch_seconds: float | None = None,
        directory: DirectoryLike | None = None,
        sync_interval: float = 300.0,
        post: Callable[[dict[str, object]], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        jit_listen: tuple[str, str, str] | None = None,  # (address, cert file, key file)
        ssh_access: Access | None = None,  # the JIT keeper's SSH login (Linux assets only)
    ) -> None:
        self.identity = identity
        self.ops = ops
        self.max_ssh = max_ssh
        self.collect_interval = collect_interval
        self.report_interval = report_interval
        self.directory = directory
        self.sync_interval = sync_interval
        self.post, self.clock = post, clock  # post None: POST with the identity's client
        self.lock = threading.RLock()  # a done callback may run inside round()
        self.assets: dict[int, SegmentAsset] = {}
        self.outbound = False
        self.memory: dict[int, AssetMemory] = {}
        self.in_flight: dict[int, Future[None]] = {}
        self.computers: tuple[Computer, ...] | None = None  # the monitored group, last read
        self.dns: dict[int, str | None] = {}  # asset id -> its computer's DN (None: has none)
        # Assets the controller stopped listing (id -> name): their computers leave the
        # protected group, even when the asset went before this server saw it unprotected.
        self.departed: dict[int, str] = {}
        self.wake = threading.Event()  # a new snapshot: decide at once
        self.dirty = threading.Event()  # something to report
        self.directory_wake = threading.Event()  # an asset got (un)protected
        self.inventory = identity.state_dir / INVENTORY
        self.jit, self.jit_listen = JitKeeper(ssh_access), jit_listen  # segment.jit
        self.follower = SnapshotFollower(identity, SegmentSnapshot, self.apply, watch_seconds=watch_seconds)

    # ------------------------------------------------------------------ snapshot

    def apply(self, snapshot: SegmentSnapshot | RevokedSnapshot) -> None:
        if isinstance(snapshot, RevokedSnapshot):
            log.error(
                "this segment server was revoked or removed: managing no asset any more; hosts keep "
                "their tables (zerogate segment break-glass removes them)"
            )
            with self.lock:
                self.assets = {}
            self.jit.update(())
            self.ops.retain(frozenset())
            return
        save_inventory(self.inventory, snapshot.assets)
        with self.lock:
            listed = {a.asset_id: a for a in snapshot.assets}
            if self.directory is not None:
                self._depart({i: a.name for i, a in self.assets.items() if i not in listed}, listed)
            self.assets = listed
            self.outbound = snapshot.learn_outbound
            for gone in set(self.memory) - set(self.assets):
                if gone not in self.in_flight:
                    del self.memory[gone]
        self.ops.retain(frozenset(a.asset_id for a in snapshot.assets))
        self.jit.update(a for a in snapshot.assets if a.os == "linux")  # openings are nft elements
        log.info("revision %s: %d asset(s)", snapshot.revision, len(snapshot.assets))
        self.wake.set()
        self.dirty.set()

    # ------------------------------------------------------------------ rounds

    def round(self, pool: ThreadPoolExecutor) -> int:
        """Decide for every idle asset and submit its steps; how many were submitted."""
        now = self.clock()
        submitted = 0
        with self.lock:
            for asset_id, asset in self.assets.items():
                if asset_id in self.in_flight:
                    continue
                memory = remember(self.memory.get(asset_id), asset)
                self.memory[asset_id] = memory
                steps = decide(asset, memory, now, collect_every=self.collect_interval)
                if steps:
                    future = pool.submit(self._run_steps, asset, memory, steps, self.outbound)
                    self.in_flight[asset_id] = future
                    future.add_done_callback(functools.partial(self._done, asset_id))
                    submitted += 1
        return submitted

    def _run_steps(
        self, asset: SegmentAsset, memory: AssetMemory, steps: tuple[Step, ...], outbound: bool
    ) -> None:
        before = (memory.state, memory.detail, memory.enforced_revision, memory.table)
        execute(asset, memory, steps, self.ops, self.clock(), outbound=outbound, flows_guard=self.lock)
        if "enforce" in steps:
            self.jit.reloaded(asset.asset_id)  # the table was (re)loaded: its openings are synced again
        after = (memory.state, memory.detail, memory.enforced_revision, memory.table)
        if after != before or "collect" in steps or "preflight" in steps:
            self.dirty.set()
        if (before[0], before[3]) != (after[0], after[3]):
            self.directory_wake.set()

    def _done(self, asset_id: int, future: Future[None]) -> None:
        with self.lock:
            self.in_flight.pop(asset_id, None)
            if asset_id not in self.assets:
                self.memory.pop(asset_id, None)
        if future.exception() is not None:  # execute() never raises; this is a bug
            log.error("asset %s: operation crashed: %s", asset_id, future.exception())

    def round_loop(self, stop: threading.Event) -> None:
        tick = min(1.0, self.collect_interval / 2)
        with ThreadPoolExecutor(max_workers=self.max_ssh, thread_name_prefix="segment-ssh") as pool:
            try:
                while not stop.is_set():
                    self.round(pool)
                    self.wake.wait(tick)
                    self.wake.clear()
            finally:
                pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ reports

    def reports(self) -> list[tuple[SegmentReport, dict[int, tuple[Flow, ...]]]]:
        """The reports to send now (bounded: assets, flows), each with the flows it took
        out of the assets' memory (:meth:`give_back` puts them back if it is not delivered)."""
        with self.lock:
            directory = None if self.computers is None else _directory(self.computers)
            out: list[tuple[SegmentReport, dict[int, tuple[Flow, ...]]]] = []
            batch: list[AssetReport] = []
            taken: dict[int, tuple[Flow, ...]] = {}
            count = 0

            def close() -> None:
                report = SegmentReport(assets=tuple(batch), directory=None if out else directory)
                out.append((report, dict(taken)))

            for asset_id, asset in sorted(self.assets.items()):
                memory = self.memory.get(asset_id)
                if memory is None:
                    continue
                flows = memory.flows
                if batch and (
                    len(batch) >= MAX_ASSETS_PER_REPORT or count + len(flows) > MAX_FLOWS_PER_REPORT
                ):
                    close()
                    batch, taken, count = [], {}, 0
                batch.append(asset_report(asset, memory, flows))
                if flows:
                    taken[asset_id], memory.flows, count = flows, (), count + len(flows)
            if batch or directory is not None:
                close()
        return out

    def give_back(self, taken: dict[int, tuple[Flow, ...]]) -> None:
        """Flows of an undelivered report go back into the memory, merged with newer ones."""
        with self.lock:
            for asset_id, flows in taken.items():
                memory = self.memory.get(asset_id)
                if memory is not None:
                    memory.flows = merge(flows, memory.flows, limit=FLOW_LIMIT).flows

    def send_reports(self, post: Callable[[dict[str, object]], None]) -> bool:
        """Send the reports, in order; False (the rest kept for later) on a failure."""
        pending = self.reports()
        for n, (report, _taken) in enumerate(pending):
            try:
                post(report.model_dump(mode="json"))
            except ControllerError as exc:
                log.debug("report not delivered: %s", exc)
                for _, later in pending[n:]:
                    self.give_back(later)
                return False
        return True

    def report_loop(self, stop: threading.Event) -> None:
        last = 0.0

        def loop(post: Callable[[dict[str, object]], None]) -> None:
            nonlocal last
            while not stop.wait(REPORT_DEBOUNCE):
                now = self.clock()
                if not (self.dirty.is_set() or now - last >= self.report_interval):
                    continue
                self.dirty.clear()
                try:
                    if self.send_reports(post):
                        last = now
                    else:
                        self.dirty.set()
                except Exception:  # reporting must never stop the rounds
                    log.exception("could not build the segment report")

        if self.post is not None:
            loop(self.post)
            return
        with self.identity.client(timeout=30) as api:

            def post(body: dict[str, object]) -> None:
                api.post(REPORT_PATH, body)

            loop(post)

    # ------------------------------------------------------------------ directory

    def sync_directory(self) -> None:
        """Read the monitored group, then bring the protected group in line."""
        assert self.directory is not None
        try:
            read = self.directory.read_monitored()
            protected = {dn_key(dn) for dn in self.directory.protected_members()}
        except DirectoryError as exc:
            log.warning("directory not read (keeping the last membership): %s", exc)
            return
        with self.lock:
            changed = self.computers != read.computers
            self.computers = read.computers
            if changed:
                self.dns.clear()
        if changed:
            log.info("directory: %d monitored computer(s)", len(read.computers))
            self.dirty.set()
        self.update_protected_group(protected)

    def _depart(self, gone: dict[int, str], listed: dict[int, SegmentAsset]) -> None:
        """Note assets no longer listed (``gone``: id -> name), under the lock. The
        controller drops only assets that enforce nothing (removed, or gone from the
        monitored group after an unprotect), so their computers leave the protected
        group -- also when the drop came before this server saw the unprotect."""
        self.departed.update(gone)
        for asset_id in set(self.departed) & set(listed):
            del self.departed[asset_id]
        if gone:
            self.directory_wake.set()

    def update_protected_group(self, protected: set[tuple[tuple[str, str], ...]]) -> None:
        """Add the assets enforced in mode protected to the protected group, remove the
        others that are in it, and the departed ones (only assets with a directory DN;
        see :meth:`dn_of`)."""
        assert self.directory is not None
        with self.lock:
            wanted = {
                i: (a.mode == "protected" and m.state == "enforced" and bool(m.table))
                for i, a in self.assets.items()
                if (m := self.memory.get(i)) is not None and m.table is not None
            }
            names = {i: self.assets[i].name for i in wanted}
            # a departed name listed again (a new id) is the listed asset's to decide
            listed = {a.name.casefold() for a in self.assets.values()}
            self.departed = {i: n for i, n in self.departed.items() if n.casefold() not in listed}
            departed = dict(self.departed)
        wanted.update(dict.fromkeys(departed, False))
        names.update(departed)
        for asset_id, want in wanted.items():
            dn = self.dn_of(asset_id, names[asset_id])
            if dn is None or (dn_key(dn) in protected) == want:
                self._departure_done(asset_id, departed)
                continue
            try:
                if want:
                    self.directory.add_protected(dn)
                    protected.add(dn_key(dn))
                else:
                    self.directory.remove_protected(dn)
                    protected.discard(dn_key(dn))
            except DirectoryError as exc:
                log.warning("directory: cannot %s %s: %s", "add" if want else "remove", dn, exc)
                continue  # a departed asset is tried again at the next sync
            self._departure_done(asset_id, departed)
            log.info("directory: %s %s the protected group", dn, "added to" if want else "removed from")

    def _departure_done(self, asset_id: int, departed: dict[int, str]) -> None:
        if asset_id in departed:
            with self.lock:
                if self.departed.get(asset_id) == departed[asset_id]:
                    del self.departed[asset_id]
                self.dns.pop(asset_id, None)

    def dn_of(self, asset_id: int, name: str) -> str | None:
        """The asset's computer DN: the snapshot carries none, so it is matched by name, first
        among the monitored group's members, else by one search under the base DN (exactly
        one computer of that name, else none: a static asset has no DN). Remembered until
        the monitored group changes."""
        if asset_id in self.dns:
            return self.dns[asset_id]
        assert self.directory is not None
        found = [c for c in self.computers or () if c.name.lower() == name.lower()]
        if not found:
            try:
                found = list(self.directory.find_computers(name))
            except DirectoryError as exc:
                log.warning("directory: cannot search for computer %s: %s", name, exc)
                return None
        dn = found[0].dn if len(found) == 1 else None
        self.dns[asset_id] = dn  # until the membership changes
        return dn

    def directory_loop(self, stop: threading.Event) -> None:
        next_read = 0.0
        while not stop.is_set():
            if self.clock() >= next_read:
                self.sync_directory()
                next_read = self.clock() + self.sync_interval
            elif self.directory_wake.is_set():
                self.directory_wake.clear()
                try:
                    assert self.directory is not None
                    protected = {dn_key(dn) for dn in self.directory.protected_members()}
                except DirectoryError as exc:
                    log.warning("directory: cannot read the protected group: %s", exc)
                else:
                    self.update_protected_group(protected)
            self.directory_wake.wait(max(0.1, min(1.0, next_read - self.clock())))

    # ------------------------------------------------------------------ run

    def run(self, stop: threading.Event, keep_on_exit: bool = False) -> None:
        """Until ``stop``; hosts keep whatever is enforced (``keep_on_exit`` has no other meaning here)."""
        loops: list[Callable[[threading.Event], None]] = [self.round_loop, self.report_loop, self.jit.loop]
        if self.directory is not None:
            loops.append(self.directory_loop)
        threads = [threading.Thread(target=f, args=(stop,), name=f.__name__, daemon=True) for f in loops]
        for t in threads:
            t.start()
        listener = start_listener(self.jit, self.identity, self.jit_listen) if self.jit_listen else None
        try:
            self.follower.run(stop)
        finally:
            if listener is not None:
                listener.stop()
            stop.set()
            self.wake.set()
            self.directory_wake.set()
            for t in threads:
                t.join(timeout=5)
            self.ops.retain(frozenset())  # event sessions end; hosts keep their tables
            log.info("segment server stopped; the assets keep their tables")


def _directory(computers: Sequence[Computer]) -> tuple[DirectoryComputer, ...]:
    """The monitored computers as the report carries them; one whose name or DN the
    report cannot carry is left out (and logged), never the whole report."""
    out = []
    for c in computers[:MAX_DIRECTORY_COMPUTERS]:
        try:
            out.append(DirectoryComputer(dn=c.dn, name=c.name, address=c.address))
        except ValidationError:
            log.warning(
                "directory: computer %r left out of the report: its name is not an asset name", c.name
            )
    return tuple(out)
