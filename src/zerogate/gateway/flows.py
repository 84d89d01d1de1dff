"""Flow records at the gateway: every flow it forwarded or refused, batched to
the controller (``POST /v1/flows``).

Where the records come from (never from the packets themselves):

- **forwarded flows**: conntrack DESTROY events in the gateway's network
  namespace, read from ctnetlink (:mod:`zerogate.gateway.flow_netlink`; why
  not the ``conntrack -E`` tool is said there), with byte accounting and entry
  timestamps switched on (``nf_conntrack_acct``, ``nf_conntrack_timestamp``).
  The event carries the tuple, bytes each way, start and end, and the
  connection mark, whose low 24 bits are the deciding policy
  (:mod:`zerogate.gateway.flow_rules`); unmarked flows are not the clients'.
- **refused flows**: the nftables set ``refused`` (counters per client,
  destination, protocol and port), read and flushed every ``interval``.

Nothing here can slow the data plane: the kernel does the counting, this loop
only reads. Records wait in a bounded queue; when the controller is away and
the queue is full, new records are dropped and counted (``dropped``), and the
count is posted with the next batch. Should the kernel still fail to deliver
an event (``ENOBUFS`` on the socket), that is counted too (``lost_events``:
how many times, not how many events).
"""

from __future__ import annotations

import errno
import logging
import threading
from collections import deque
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from zerogate.agent.state import DeviceIdentity
from zerogate.gateway.flow_netlink import DestroyEvents, parse_messages
from zerogate.gateway.flow_rules import REFUSED_SET, Linger, forwarded_record, refused_records
from zerogate.model.snapshot import GatewaySnapshot
from zerogate.netops import conntrack
from zerogate.netops.command import CommandError, require, run
from zerogate.netops.controller_api import ControllerError
from zerogate.netops.nftables import TABLE

log = logging.getLogger(__name__)

SEND_INTERVAL = 2.0  # seconds between batches (and reads of the refused set)
BATCH = 1000  # records per POST: the controller's limit
QUEUE = 50_000  # records kept while the controller is away
SYSCTL = Path("/proc/sys/net/netfilter")
_ACCOUNTING = ("nf_conntrack_acct", "nf_conntrack_timestamp")


def _read_int(name: str, default: int) -> int:
    try:
        return int((SYSCTL / name).read_text().strip())
    except (OSError, ValueError):
        return default


def read_linger() -> Linger:
    """The namespace's conntrack timeouts that delay a DESTROY event after the last packet."""
    d = Linger()
    return Linger(
        _read_int("nf_conntrack_tcp_timeout_time_wait", d.tcp_time_wait),
        _read_int("nf_conntrack_tcp_timeout_close", d.tcp_close),
        _read_int("nf_conntrack_udp_timeout", d.udp),
        _read_int("nf_conntrack_udp_timeout_stream", d.udp_stream),
    )


class FlowRecorder:
    """Records flows while ``flow_loop`` runs (a thread of the gateway daemon)."""

    def __init__(
        self,
        identity: DeviceIdentity,
        snapshot: Callable[[], GatewaySnapshot | None],
        *,
        enabled: bool = True,
        interval: float = SEND_INTERVAL,
        queue_size: int = QUEUE,
    ) -> None:
        self.identity = identity
        self.snapshot = snapshot
        self.enabled = enabled
        self.interval = interval
        self.queue: deque[dict[str, Any]] = deque()
        self.queue_size = queue_size
        self.lock = threading.Lock()
        self.dropped = 0  # records not kept: queue full (sent with the next batch, then reset)
        self.lost_events = 0  # ENOBUFS warnings from conntrack since the last batch
        self.skipped = 0  # event lines not understood since the last batch
        self.recorded = 0  # records queued since start (tests, bench)
        self.sent = 0  # records the controller took since start
        self._devices: tuple[GatewaySnapshot | None, dict[str, int]] = (None, {})
        self._linger = Linger()

    # -- records in

    def devices(self) -> Mapping[str, int]:
        """Client tunnel address -> device id, from the current snapshot (cached per snapshot)."""
        snap = self.snapshot()
        if snap is not self._devices[0]:
            table = {str(c.address): c.device_id for c in snap.clients if c.address} if snap else {}
            self._devices = (snap, table)
        return self._devices[1]

    def offer(self, records: list[dict[str, Any]]) -> None:
        """Queue ``records``; what does not fit is dropped and counted, never waited for."""
        with self.lock:
            room = max(0, self.queue_size - len(self.queue))
            self.queue.extend(records[:room])
            self.dropped += len(records) - min(room, len(records))
            self.recorded += min(room, len(records))

    def take(self, parsed: conntrack.ConntrackEvents) -> None:
        """Parsed DESTROY events into records."""
        devices = self.devices()
        records = [r for e in parsed.events if (r := forwarded_record(e, devices, self._linger)) is not None]
        with self.lock:
            self.lost_events += parsed.overflows
            self.skipped += parsed.skipped
        if records:
            self.offer(records)

    def read_refused(self) -> None:
        """Read the ``refused`` set's counters and flush it (the few packets refused
        between the two commands are not counted)."""
        nft = require("nft", "nftables")
        listing = run([nft, "-j", "list", "set", "inet", TABLE, REFUSED_SET], check=False, timeout=30)
        if listing.returncode != 0:
            return  # no table yet (nothing applied) or an older table without the set
        run([nft, "flush", "set", "inet", TABLE, REFUSED_SET], check=False, timeout=30)
        records, bad = refused_records(listing.stdout, datetime.now(UTC), self.devices())
        if bad:
            log.warning("flow records: %d refused-set elements not understood", bad)
        self.offer(records)

    # -- records out

    def _batch(self) -> tuple[list[dict[str, Any]], dict[str, int]]:
        with self.lock:
            batch = [self.queue.popleft() for _ in range(min(BATCH, len(self.queue)))]
            losses = {"dropped": self.dropped, "lost_events": self.lost_events, "skipped": self.skipped}
            self.dropped = self.lost_events = self.skipped = 0
        return batch, losses

    def _requeue(self, batch: list[dict[str, Any]], losses: dict[str, int]) -> None:
        with self.lock:
            room = max(0, self.queue_size - len(self.queue))
            kept = batch[:room]
            self.queue.extendleft(reversed(kept))
            self.dropped += losses["dropped"] + len(batch) - len(kept)
            self.lost_events += losses["lost_events"]
            self.skipped += losses["skipped"]

    def send(self, post: Callable[[str, Any], Any]) -> bool:
        """POST queued records in batches until the queue is empty; False when the
        controller did not take one (the batch goes back to the queue's front)."""
        while True:
            batch, losses = self._batch()
            if not batch and not any(losses.values()):
                return True
            try:
                post("/v1/flows", {"records": batch, **losses})
            except ControllerError as exc:
                self._requeue(batch, losses)
                log.debug("flow records not delivered (%d queued): %s", len(self.queue), exc)
                return False
            self.sent += len(batch)
            if losses["dropped"] or losses["lost_events"]:
                log.warning(
                    "flow records lost: %d dropped (queue full), %d kernel event overflows",
                    losses["dropped"],
                    losses["lost_events"],
                )
            if len(batch) < BATCH:
                return True

    # -- the loop

    def _prepare(self) -> None:
        for name in _ACCOUNTING:
            try:
                (SYSCTL / name).write_text("1\n")
            except OSError as exc:
                log.warning("flow records: cannot set net.netfilter.%s=1 (%s): no byte counts", name, exc)
        self._linger = read_linger()

    def _read_events(self, events: DestroyEvents, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                data = events.receive()
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    log.error(
                        "flow records: conntrack events unreadable, forwarded flows not recorded: %s", exc
                    )
                    return
                with self.lock:
                    self.lost_events += 1
                continue
            if data:
                self.take(parse_messages(data, datetime.now(UTC)))

    def flow_loop(self, stop: threading.Event) -> None:
        """Until ``stop``: follow conntrack, read refusals, post batches. Never raises."""
        if not self.enabled:
            log.info("flow records are off (gateway setting flow_records = false)")
            return
        try:
            self._prepare()
            events = DestroyEvents.open()
        except OSError as exc:
            log.error("flow records off: cannot follow conntrack events: %s", exc)
            return
        reader = threading.Thread(
            target=self._read_events, args=(events, stop), name="flow-events", daemon=True
        )
        reader.start()
        log.info("recording flows (conntrack events, refusal counters), batches every %g s", self.interval)
        try:
            with self.identity.client(timeout=10) as api:
                while not stop.wait(self.interval):
                    self._round(api.post)
                reader.join(timeout=2)
                self._round(api.post)  # what is queued at shutdown, once
        finally:
            reader.join(timeout=2)
            events.close()

    def _round(self, post: Callable[[str, Any], Any]) -> None:
        try:
            self.read_refused()
        except (CommandError, ValueError) as exc:
            log.warning("flow records: cannot read refusals: %s", exc)
        try:
            self.send(post)
        except Exception as exc:  # recording must never stop the gateway
            log.warning("flow records: sending failed: %s", exc)
