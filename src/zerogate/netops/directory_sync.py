"""Following the monitored directory group: what changed since the last read.

:func:`diff_membership` is pure: two sets of :class:`~zerogate.netops.ldap.Computer`
in, the computers added, removed and changed (same entry, new name or address)
out, compared by DN (case and DN escaping ignored). :class:`DirectorySync` polls
a reader (normally :meth:`Directory.read_monitored`) every ``interval`` seconds
and hands each non-empty change to a callback, so a membership change is seen
within one interval. Clock and sleep are injected: tests drive it without
waiting, and a daemon passes ``threading.Event.wait`` as ``sleep`` to stop
promptly.

Errors: a :class:`~zerogate.netops.ldap.DirectoryError` from the reader is
handed to ``on_error`` and the last good membership is kept (the next poll
retries); other exceptions propagate.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from zerogate.netops.ldap import Computer, DirectoryError, MonitoredRead, dn_key

__all__ = ["DirectorySync", "MembershipChange", "diff_membership"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MembershipChange:
    """Computers that joined, left, or changed name/address, each sorted by DN."""

    added: tuple[Computer, ...] = ()
    removed: tuple[Computer, ...] = ()
    changed: tuple[Computer, ...] = ()  # the new version of each changed computer

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)


def _by_key(computers: Iterable[Computer]) -> dict[tuple[tuple[str, str], ...], Computer]:
    return {dn_key(c.dn): c for c in computers}


def diff_membership(previous: Iterable[Computer], current: Iterable[Computer]) -> MembershipChange:
    """What changed from ``previous`` to ``current`` (pure)."""
    before, after = _by_key(previous), _by_key(current)
    added = [c for k, c in after.items() if k not in before]
    removed = [c for k, c in before.items() if k not in after]
    changed = [
        c
        for k, c in after.items()
        if k in before and (before[k].name, before[k].address) != (c.name, c.address)
    ]

    def ordered(items: list[Computer]) -> tuple[Computer, ...]:
        return tuple(sorted(items, key=lambda c: c.dn))

    return MembershipChange(ordered(added), ordered(removed), ordered(changed))


class DirectorySync:
    """Polls the monitored group; reports changes to ``on_change``, failures to ``on_error``.

    The first successful poll reports every computer as added.
    """

    def __init__(
        self,
        read: Callable[[], MonitoredRead],
        *,
        interval: float,
        on_change: Callable[[MembershipChange, MonitoredRead], None],
        on_error: Callable[[DirectoryError], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        if interval <= 0:
            raise ValueError("the directory sync interval must be positive")
        self._read = read
        self.interval = interval
        self._on_change = on_change
        self._on_error = on_error
        self._clock = clock
        self._sleep = sleep
        self.computers: tuple[Computer, ...] = ()
        self.last_read: MonitoredRead | None = None
        self.polls = 0
        self.failures = 0  # consecutive failed polls

    def poll(self) -> MembershipChange | None:
        """Read once; return the change (possibly empty), or None if the read failed."""
        self.polls += 1
        try:
            current = self._read()
        except DirectoryError as exc:
            self.failures += 1
            log.warning(
                "directory sync failed (%d in a row): %s",
                self.failures,
                exc,
                extra={"component": "directory"},
            )
            if self._on_error is not None:
                self._on_error(exc)
            return None
        self.failures = 0
        change = diff_membership(self.computers, current.computers)
        self.computers, self.last_read = current.computers, current
        if change:
            log.info(
                "monitored group: %d added, %d removed, %d changed",
                len(change.added),
                len(change.removed),
                len(change.changed),
                extra={"component": "directory"},
            )
            self._on_change(change, current)
        return change

    def run(self, should_stop: Callable[[], bool]) -> None:
        """Poll every ``interval`` seconds (measured from the start of each poll) until ``should_stop()``."""
        while not should_stop():
            started = self._clock()
            self.poll()
            while not should_stop():
                remaining = started + self.interval - self._clock()
                if remaining <= 0:
                    break
                self._sleep(remaining)
