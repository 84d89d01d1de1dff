"""VRRP master claims: the gateway follows a connector pair's keepalived at once.

A connector group with a virtual IP runs keepalived between its connectors;
the master tells the gateway "I am master of my group" (:mod:`zerogate.model.vrrp`)
on each transition and every :data:`~zerogate.model.vrrp.REPEAT_EVERY` s.
Waiting for the probes to notice a dead master costs about a second; the
claim moves the group's subnets as soon as the new master says so.

Two parts, both without knowledge of the daemon:

- :class:`ClaimBook` decides what a datagram means: accepted only when its
  source is a connector's tunnel address in the current snapshot (WireGuard
  admits a packet from a peer only with a source in that peer's allowed IPs,
  so the source names the sender) and the message names that connector's own
  group. Per group it keeps the master claimant and when it was last heard; a
  claim not repeated for ``CLAIM_TTL`` is forgotten (the probes decide again).
- :class:`ClaimReceiver` is the socket: UDP ``STATE_PORT`` on each of the
  gateway's tunnel addresses, bound to the tunnel interface (``SO_BINDTODEVICE``)
  so that a datagram with a connector's source address arriving any other way
  (the WAN, a LAN) is never read. It binds when the address exists and
  rebinds when the addresses change.

Drops are logged at most once per :data:`DROP_LOG_EVERY` s with counts per
reason and never with anything the datagram carried.
"""

from __future__ import annotations

import errno
import logging
import selectors
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum

from zerogate.model.snapshot import ConnectorEntry
from zerogate.model.vrrp import CLAIM_TTL, MAX_BYTES, REPEAT_EVERY, STATE_PORT, decode

log = logging.getLogger(__name__)

DROP_LOG_EVERY = 10.0  # seconds between two warnings about dropped state datagrams
REBIND_EVERY = 0.5  # seconds between checks of the tunnel addresses to listen on
SERIES_GAP = 2 * REPEAT_EVERY  # a message after a longer silence is news, not a repeat
MAX_PER_WAKE = 64  # datagrams read from one socket before looking at the others


class Verdict(Enum):
    """What one datagram did. The first four are accepted, the rest dropped."""

    NEW_MASTER = "new master"  # the group's traffic moves to the sender now
    REFRESHED = "refreshed"  # the current claimant repeated its claim
    WITHDRAWN = "withdrawn"  # the claimant is backup or fault now: claim dropped
    NOTED = "noted"  # valid, changes nothing (a backup's report, a rival's repeat)
    UNKNOWN_SOURCE = "not from a connector's tunnel address"
    OTHER_GROUP = "names a group not the sender's own"
    MALFORMED = "malformed"
    OVERSIZED = "oversized"

    @property
    def accepted(self) -> bool:
        return self in (Verdict.NEW_MASTER, Verdict.REFRESHED, Verdict.WITHDRAWN, Verdict.NOTED)


@dataclass
class Claim:
    connector: str
    heard: float  # time.monotonic() of the last master message from it


class ClaimBook:
    """Per group, the connector that last said it is master, and when.

    Split brain (both of a pair say master): a master message takes the group
    from another claimant only when it is news from its sender (a ``seq`` other
    than its last message's, or the first message after a silence longer than
    :data:`SERIES_GAP`: ``seq`` starts again when a connector restarts), never
    by mere repetition, so two masters repeating every second do not make the
    gateway flap between them. Not thread-safe: the caller holds its lock.
    """

    def __init__(self, ttl: float = CLAIM_TTL) -> None:
        self.ttl = ttl
        self.claims: dict[str, Claim] = {}  # group -> claim
        self._last: dict[str, tuple[int, float]] = {}  # connector -> (seq, time) of its last message

    def offer(
        self, source: str, data: bytes, connectors: Iterable[ConnectorEntry], now: float
    ) -> tuple[Verdict, str | None, str | None]:
        """(verdict, group, connector) for one datagram from ``source``."""
        if len(data) > MAX_BYTES:
            return Verdict.OVERSIZED, None, None
        sender = next((c for c in connectors if c.address is not None and str(c.address) == source), None)
        if sender is None:
            return Verdict.UNKNOWN_SOURCE, None, None
        try:
            msg = decode(data)
        except ValueError:
            return Verdict.MALFORMED, None, sender.name
        if msg.group != sender.connector_group:
            return Verdict.OTHER_GROUP, None, sender.name
        group, name = msg.group, sender.name
        last = self._last.get(name)
        transition = last is None or last[0] != msg.seq or now - last[1] > SERIES_GAP
        self._last[name] = (msg.seq, now)
        current = self.claims.get(group)
        if current is not None and now - current.heard > self.ttl:
            del self.claims[group]
            current = None
        if msg.state != "master":
            if current is not None and current.connector == name:
                del self.claims[group]
                return Verdict.WITHDRAWN, group, name
            return Verdict.NOTED, group, name
        if current is not None and current.connector == name:
            current.heard = now
            return Verdict.REFRESHED, group, name
        if current is not None and not transition:
            return Verdict.NOTED, group, name  # a rival's repeat: no flapping
        self.claims[group] = Claim(name, now)
        return Verdict.NEW_MASTER, group, name

    def masters(self, now: float) -> dict[str, Claim]:
        """The unexpired claims (group -> claim); expired ones are forgotten."""
        for group in [g for g, c in self.claims.items() if now - c.heard > self.ttl]:
            del self.claims[group]
        return dict(self.claims)

    def forget_except(self, connectors: Iterable[ConnectorEntry]) -> None:
        """Drop claims and memory of connectors no longer in the snapshot (or moved group)."""
        where = {c.name: c.connector_group for c in connectors}
        self.claims = {g: c for g, c in self.claims.items() if where.get(c.connector) == g}
        self._last = {n: last for n, last in self._last.items() if n in where}


class DropLog:
    """Rate-limited warnings about dropped datagrams: counts by reason and source."""

    def __init__(self, every: float = DROP_LOG_EVERY) -> None:
        self.every = every
        self._counts: Counter[tuple[str, str]] = Counter()
        self._last: float | None = None

    def drop(self, verdict: Verdict, source: str, now: float) -> None:
        self._counts[(verdict.value, source)] += 1
        if self._last is not None and now - self._last < self.every:
            return
        self._last = now
        summary = "; ".join(f"{n} from {src} ({why})" for (why, src), n in sorted(self._counts.items())[:10])
        log.warning("dropped VRRP state datagrams: %s", summary)
        self._counts.clear()


class ClaimReceiver:
    """UDP ``port`` on each address ``addresses()`` returns, bound to ``interface``;
    every datagram goes to ``handle(source address, data)``. Run :meth:`run` in a
    thread; it returns when ``stop`` is set and closes its sockets."""

    def __init__(
        self,
        interface: str,
        addresses: Callable[[], Sequence[str]],
        handle: Callable[[str, bytes], None],
        *,
        port: int = STATE_PORT,
    ) -> None:
        self.interface = interface
        self.addresses = addresses
        self.handle = handle
        self.port = port
        self.sockets: dict[str, socket.socket] = {}
        self.bound = threading.Event()  # set while at least one address is bound (for tests)
        self._failed: set[str] = set()  # addresses whose bind failure was logged

    def _bind(self, address: str) -> socket.socket | None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self.interface.encode())
            sock.bind((address, self.port))
        except OSError as exc:
            sock.close()
            if exc.errno != errno.EADDRNOTAVAIL and address not in self._failed:
                log.warning("cannot listen for VRRP state on %s:%d: %s", address, self.port, exc)
            self._failed.add(address)
            return None  # the interface has no such address yet: tried again later
        sock.setblocking(False)
        self._failed.discard(address)
        log.info("listening for VRRP state on %s:%d (%s only)", address, self.port, self.interface)
        return sock

    def _rebind(self, sel: selectors.BaseSelector) -> None:
        want = set(self.addresses())
        for address in [a for a in self.sockets if a not in want]:
            gone = self.sockets.pop(address)
            sel.unregister(gone)
            gone.close()
        for address in sorted(want - set(self.sockets)):
            sock = self._bind(address)
            if sock is not None:
                self.sockets[address] = sock
                sel.register(sock, selectors.EVENT_READ)
        if self.sockets:
            self.bound.set()
        else:
            self.bound.clear()

    def _drain(self, sock: socket.socket) -> None:
        for _ in range(MAX_PER_WAKE):
            try:
                data, source = sock.recvfrom(MAX_BYTES + 1)
            except BlockingIOError:
                return
            except OSError as exc:  # e.g. a queued ICMP error: the socket stays usable
                log.debug("VRRP state socket: %s", exc)
                return
            # a datagram longer than MAX_BYTES arrives cut to MAX_BYTES + 1: still oversized
            self.handle(str(source[0]), data)

    def run(self, stop: threading.Event) -> None:
        sel = selectors.DefaultSelector()
        next_check = 0.0
        try:
            while not stop.is_set():
                if time.monotonic() >= next_check:
                    self._rebind(sel)
                    next_check = time.monotonic() + REBIND_EVERY
                if not self.sockets:
                    stop.wait(REBIND_EVERY)
                    continue
                for key, _ in sel.select(timeout=REBIND_EVERY):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    self._drain(sock)
        finally:
            for sock in self.sockets.values():
                sock.close()
            self.sockets.clear()
            self.bound.clear()
            sel.close()
