"""How long a device waits before asking again: the steps (pure) and a jittered
stateful helper for loops that are not a state machine (the connector's re-dial)."""

from __future__ import annotations

import random
from dataclasses import dataclass

MAX_PUSHBACK = 60.0  # the longest Retry-After a device honours
JITTER = (0.75, 1.25)  # +-25 % around a backoff step
PUSHBACK_SPREAD = (1.0, 1.25)  # a Retry-After is a minimum: spread only upwards


@dataclass(frozen=True)
class Delays:
    """Backoff steps: ``first`` doubling to ``cap``, or to ``busy_cap`` under load.

    The cap is low on purpose: a refused connection costs a stopped controller
    nothing, and a device must pick up changes (a revocation) within about 2 s
    of the controller coming back. Worst case, a device that lost the
    controller reconnects ``1.25 * cap`` (1.25 s) after it listens again, plus
    one request.

    The wait rises only when the controller shows load, so a crowd of devices
    slows down exactly when it must:

    - ``busy`` (an HTTP 5xx without ``Retry-After``, a TLS handshake the
      server cut: signs of a controller that accepts but cannot keep up): the
      same doubling up to ``busy_cap`` (8 s) instead;
    - a 429/503 with ``Retry-After`` (the controller's own pushback): honoured
      as given (at most ``MAX_PUSHBACK``), spread by +0..25 % so devices told
      the same number do not come back in step; then the worst case is 75 s.
    """

    first: float = 0.25
    cap: float = 1.0
    busy_cap: float = 8.0

    def base(self, attempt: int, *, busy: bool = False) -> float:
        cap = max(self.cap, self.busy_cap) if busy else self.cap
        return float(min(cap, self.first * 2 ** min(attempt, 32)))  # bounded: no float overflow


def pushback(retry_after: float) -> float:
    """The wait a Retry-After asks for, bounded to 0..MAX_PUSHBACK."""
    return min(MAX_PUSHBACK, max(0.0, retry_after))


class Backoff:
    """A stateful :class:`Delays` with jitter, for loops that are not a state machine."""

    def __init__(self, first: float = 0.25, cap: float = 1.0, busy_cap: float = 8.0) -> None:
        self.delays = Delays(first, cap, busy_cap)
        self.attempt = 0

    def next(self, retry_after: float | None = None, *, busy: bool = False) -> float:
        if retry_after is not None:
            return pushback(retry_after) * random.uniform(*PUSHBACK_SPREAD)  # noqa: S311
        base = self.delays.base(self.attempt, busy=busy)
        self.attempt += 1
        return float(base * random.uniform(*JITTER))  # noqa: S311 - jitter, not a secret

    def reset(self) -> None:
        self.attempt = 0
