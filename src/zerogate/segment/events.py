"""Learning from conntrack events: one long-lived SSH session per learning asset
running ``conntrack -E``, merged with the periodic ``conntrack -L`` snapshots.

Snapshots miss a connection that opens and ends between two of them (its entry
is gone from the table); events see every new connection, but they are lossy:
the kernel drops them when the reader's netlink buffer is full ("ENOBUFS",
counted as ``overflows``), the session may be down for a while, and the server
keeps at most ``cap`` connections per asset between two snapshots (the rest is
counted as ``dropped``). So both are used, and each connection is counted once:

- :class:`EventLedger` keeps the new connections the events announced since the
  last snapshot (one entry per 5-tuple) and, at the next snapshot,
  :meth:`EventLedger.take` returns one :class:`Observation` per connection seen
  either way: first seen at its event (or the snapshot), last seen at the
  snapshot when it is still there. A connection counted in one window is not
  counted again for its end (``TIME_WAIT``/``CLOSE`` entries) nor for an event
  that arrives after the snapshot that already had it; a connection still open
  counts again in the next window, as with snapshots alone (``count`` is "seen
  in so many windows", which keeps ``last_seen`` of long-lived flows fresh).
- :class:`EventStream` runs the session (any argv: tests and the benchmark run
  it without SSH) in a thread of its own, hands parsed lines to a sink, and
  restarts it with a doubling back-off when it ends; a host that offers another
  host key ends it for good (the reconcile loop reports that).
- :class:`EventStreams` is the segment server's set of streams, one per learning
  asset. Each session first (re)loads ``inet zerogate_learn`` and only then
  subscribes, so conntrack tracks in the asset's namespace before events are
  expected, also after the host rebooted. Closing the session's stdin (or losing
  the connection) makes the host stop its ``conntrack -E`` at once.

Times are the server's clock at reading (one clock for events and snapshots of
an asset, whatever the asset's own clock says). Nothing here raises into the
caller's loop: a session's failure is logged and kept in ``last_error``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import subprocess
import threading
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from zerogate.model.segment import Address, Connection, Flow, Listener
from zerogate.model.snapshot import SegmentAsset
from zerogate.netops.conntrack import ConntrackEvents, learning_table, parse_events, stream_argv
from zerogate.policy.segment import derive_timed_flows
from zerogate.segment.ssh import CONNTRACK, NFT, Access, AssetTarget

log = logging.getLogger(__name__)

PENDING_MAX = 50_000  # connections kept per asset between two snapshots
BACKOFF_FIRST, BACKOFF_MAX = 1.0, 60.0  # seconds before a stopped session starts again
STEADY_AFTER = 60.0  # a session that lived this long starts the back-off afresh
_ENDED = frozenset({"TIME_WAIT", "CLOSE"})  # a TCP entry kept only for the connection's end
_READ = 65536
_HOST_KEY_FAILED = "Host key verification failed"

# $1 1 = through sudo -n, $2 nft, $3 conntrack, $4 the learning table, then conntrack's
# arguments. The table first (conntrack only tracks once something needs it), then the
# stream; the stream is stopped when the server closes our stdin (fd 3 keeps it for the
# watcher) or the connection drops.
STREAM_SCRIPT = r"""
z=$1 nft=$2 ct=$3 table=$4
shift 4
PATH="$PATH:/usr/sbin:/sbin"
if [ "$z" = 1 ]; then printf '%s' "$table" | sudo -n "$nft" -f -; else printf '%s' "$table" | "$nft" -f -; fi || exit 3
exec 3<&0
if [ "$z" = 1 ]; then sudo -n "$ct" "$@" </dev/null 2>&1 & else "$ct" "$@" </dev/null 2>&1 & fi
pid=$!
{ cat <&3; kill "$pid"; } >/dev/null 2>&1 &
wait "$pid"
"""

ConnectionKey = tuple[str, Address, Address, int, int]
Sink = Callable[[ConntrackEvents, datetime], None]


def key_of(connection: Connection) -> ConnectionKey:
    """A connection's identity: protocol and the original direction's 5-tuple."""
    c = connection
    return (c.protocol, c.src, c.dst, c.sport, c.dport)


@dataclass(frozen=True, slots=True)
class Observation:
    """One connection counted once in a window: first and last seen by the server."""

    first_seen: datetime
    last_seen: datetime
    connection: Connection


class EventLedger:
    """The new connections of one asset since its last snapshot (thread-safe; see the module)."""

    def __init__(self, cap: int = PENDING_MAX) -> None:
        if cap < 1:
            raise ValueError(f"the pending cap must be at least 1, not {cap}")
        self.cap = cap
        self._lock = threading.Lock()
        self._window: dict[ConnectionKey, tuple[datetime, Connection]] = {}
        self._last_snapshot: frozenset[ConnectionKey] = frozenset()
        self._counted: frozenset[ConnectionKey] = frozenset()  # in the previous window
        self.received = 0  # NEW events read
        self.dropped = 0  # new connections refused: ``cap`` were pending
        self.overflows = 0  # the host's kernel said it lost events
        self.skipped = 0  # lines not understood

    def add(self, parsed: ConntrackEvents, at: datetime) -> None:
        """A sink for :class:`EventStream`: the events read at ``at``."""
        with self._lock:
            self.overflows += parsed.overflows
            self.skipped += parsed.skipped
            for event in parsed.events:
                if event.kind != "NEW":
                    continue
                self.received += 1
                key = key_of(event.connection)
                if key in self._window or key in self._last_snapshot:
                    continue  # the snapshot already had it: an event that came late
                if len(self._window) >= self.cap:
                    self.dropped += 1
                    continue
                self._window[key] = (at, event.connection)

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._window)

    def take(self, snapshot: Iterable[Connection], at: datetime) -> list[Observation]:
        """The window that ends with ``snapshot`` (taken at ``at``): each connection once."""
        out: list[Observation] = []
        with self._lock:
            window, self._window = self._window, {}
            seen: set[ConnectionKey] = set()
            for conn in snapshot:
                key = key_of(conn)
                if key in seen:
                    continue
                seen.add(key)
                event = window.pop(key, None)
                if event is not None:
                    out.append(Observation(event[0], at, conn))
                elif key in self._counted and conn.state in _ENDED:
                    continue  # the end of a connection counted in the previous window
                else:
                    out.append(Observation(at, at, conn))
            self._last_snapshot = frozenset(seen)
            for key, (first, conn) in window.items():
                seen.add(key)
                out.append(Observation(first, first, conn))
            self._counted = frozenset(seen)
        return out


def flows_of(
    observations: Sequence[Observation],
    listeners: Iterable[Listener],
    local_addresses: Iterable[Address],
    *,
    outbound: bool = False,
) -> tuple[Flow, ...]:
    """One flow per observation that is a flow (see :func:`zerogate.policy.segment.derive_timed_flows`),
    first and last seen as observed; not merged."""
    sockets, local = tuple(listeners), tuple(local_addresses)
    # which connections make flows depends on the connection only, so the two runs align
    firsts = derive_timed_flows(((o.first_seen, o.connection) for o in observations), sockets, local,
                                outbound=outbound)  # fmt: skip
    lasts = derive_timed_flows(((o.last_seen, o.connection) for o in observations), sockets, local,
                               outbound=outbound)  # fmt: skip
    return tuple(replace(a, last_seen=b.last_seen) for a, b in zip(firsts, lasts, strict=True))


# --------------------------------------------------------------------------- the session


class EventStream:
    """One event session kept running (see the module): ``command()`` gives its argv."""

    def __init__(
        self,
        name: str,
        command: Callable[[], Sequence[str]],
        sink: Sink,
        *,
        backoff_first: float = BACKOFF_FIRST,
        backoff_max: float = BACKOFF_MAX,
        steady_after: float = STEADY_AFTER,
    ) -> None:
        self.name, self.command, self.sink = name, command, sink
        self.backoff_first, self.backoff_max, self.steady_after = backoff_first, backoff_max, steady_after
        self.sessions = 0  # sessions started
        self.last_error = ""
        self.gave_up = False  # the host key changed: not started again
        self._stop = threading.Event()
        self._proc: subprocess.Popen[bytes] | None = None
        self._guard = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        """The running session's local process (``ssh``), if one runs."""
        with self._guard:
            return None if self._proc is None else self._proc.pid

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self.running:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name=f"segment-events-{self.name}", daemon=True)
        self._thread.start()

    def request_stop(self) -> None:
        """Ask the session to end (its stdin closed: the host stops its conntrack); returns at once."""
        self._stop.set()
        with self._guard:
            proc = self._proc
        if proc is not None and proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()

    def stop(self, timeout: float = 10.0) -> None:
        """End the session and the thread (terminated, then killed, if it will not end)."""
        self.request_stop()
        with self._guard:
            proc = self._proc
        if proc is not None:
            _end(proc, timeout / 2)
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        delay = self.backoff_first
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                status, errors = self._session()
            except Exception as exc:  # a bug or an unstartable ssh: retried like a dead session
                log.exception("events %s: the session failed", self.name)
                status, errors = -1, str(exc)
            if self._stop.is_set():
                return
            self.last_error = f"exit {status}: {errors}" if errors else f"exit {status}"
            if status == 255 and _HOST_KEY_FAILED in errors:
                self.gave_up = True
                log.warning("events %s: the host key changed; event stream stopped", self.name)
                return
            if time.monotonic() - started >= self.steady_after:
                delay = self.backoff_first
            log.info("events %s: session ended (%s); again in %g s", self.name, self.last_error, delay,
                     extra={"component": "segment", "asset": self.name})  # fmt: skip
            if self._stop.wait(delay):
                return
            delay = min(self.backoff_max, delay * 2)

    def _session(self) -> tuple[int, str]:
        """One session until it ends or is stopped: its exit status and the last lines it
        printed that were not events (ssh's and sudo's errors)."""
        proc = subprocess.Popen(
            list(self.command()), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={**os.environ, "LC_ALL": "C"},
        )  # fmt: skip
        with self._guard:
            self._proc = proc
        self.sessions += 1
        if self._stop.is_set():  # stop() ran before _proc was set
            _end(proc, 2.0)
        errors: list[str] = []
        try:
            assert proc.stdout is not None and proc.stderr is not None
            self._read(proc.stdout.fileno(), proc.stderr.fileno(), errors)
        finally:
            _end(proc, 5.0)
            with self._guard:
                self._proc = None
        return proc.returncode, " | ".join(errors[-3:])[:500]

    def _read(self, out: int, err: int, errors: list[str]) -> None:
        partial = {out: b"", err: b""}
        with selectors.DefaultSelector() as selector:
            selector.register(out, selectors.EVENT_READ)
            selector.register(err, selectors.EVENT_READ)
            open_fds = {out, err}
            while open_fds:
                for key, _ in selector.select(timeout=1.0):
                    fd = int(key.fd)
                    chunk = os.read(fd, _READ)
                    if not chunk:
                        selector.unregister(fd)
                        open_fds.discard(fd)
                        lines, partial[fd] = partial[fd], b""
                    else:
                        data = partial[fd] + chunk
                        cut = data.rfind(b"\n") + 1
                        lines, partial[fd] = data[:cut], data[cut:]
                    if lines:
                        self._lines(lines.decode("utf-8", "replace"), errors, fd == err)

    def _lines(self, text: str, errors: list[str], stderr: bool) -> None:
        if stderr:
            errors.extend(line.strip() for line in text.splitlines() if line.strip())
            del errors[:-10]
            return
        parsed = parse_events(text)
        if parsed.skipped:  # sudo's or the shell's complaints come in the stream
            errors.extend(line.strip() for line in text.splitlines() if line.strip()[:1] not in ("", "["))
            del errors[:-10]
        self.sink(parsed, datetime.now(UTC))


def _end(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Close the session's stdin, then wait, terminate, kill (by this PID only)."""
    if proc.stdin is not None:
        with contextlib.suppress(OSError):
            proc.stdin.close()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------- per asset


def session_argv(asset: SegmentAsset, access: Access) -> list[str]:
    """The ``ssh`` command of an asset's event session: its own connection (never the
    shared one, which each operation ends), the learning table loaded first."""
    target = AssetTarget(asset, access)
    sudo = "1" if target.sudo else "0"
    command = ["env", "LC_ALL=C", "sh", "-c", STREAM_SCRIPT, "zerogate-events", sudo, NFT, CONNTRACK,
               learning_table(), *stream_argv()[1:]]  # fmt: skip
    return target.ssh_argv(command, fresh=True)


def _identity(asset: SegmentAsset) -> tuple[str, int, str, str | None]:
    return (str(asset.address), asset.ssh_port, asset.ssh_user, asset.host_key)


class EventStreams:
    """The segment server's event sessions, one per learning asset, with their ledgers."""

    def __init__(self, access: Access, *, cap: int = PENDING_MAX) -> None:
        self.access, self.cap = access, cap
        self._lock = threading.Lock()
        self._streams: dict[int, tuple[tuple[str, int, str, str | None], EventStream]] = {}
        self._ledgers: dict[int, EventLedger] = {}

    def ensure(self, asset: SegmentAsset) -> EventLedger:
        """The asset's session running (started, or restarted for a new address, port,
        login or key) and its ledger."""
        identity = _identity(asset)
        with self._lock:
            ledger = self._ledgers.setdefault(asset.asset_id, EventLedger(self.cap))
            current = self._streams.get(asset.asset_id)
            if current is not None and current[0] == identity and not current[1].gave_up:
                current[1].start()  # no-op while it runs
                return ledger
            old = current[1] if current is not None else None
            stream = EventStream(asset.name, lambda: session_argv(asset, self.access), ledger.add)
            self._streams[asset.asset_id] = (identity, stream)
        if old is not None:
            old.stop()
        stream.start()
        return ledger

    def ledger(self, asset_id: int) -> EventLedger | None:
        with self._lock:
            return self._ledgers.get(asset_id)

    def stream(self, asset_id: int) -> EventStream | None:
        with self._lock:
            found = self._streams.get(asset_id)
        return None if found is None else found[1]

    def stop(self, asset_id: int) -> None:
        """Stop the asset's session and forget its ledger (learning ended)."""
        self._stop_all([asset_id])

    def retain(self, asset_ids: Collection[int]) -> None:
        """Stop the sessions of every asset not in ``asset_ids`` (all asked first, then awaited)."""
        with self._lock:
            gone = [i for i in set(self._streams) | set(self._ledgers) if i not in asset_ids]
        self._stop_all(gone)

    def _stop_all(self, asset_ids: Iterable[int]) -> None:
        stopping = []
        with self._lock:
            for asset_id in asset_ids:
                found = self._streams.pop(asset_id, None)
                self._ledgers.pop(asset_id, None)
                if found is not None:
                    stopping.append(found[1])
        for stream in stopping:
            stream.request_stop()
        for stream in stopping:
            stream.stop()
