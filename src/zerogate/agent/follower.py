"""The snapshot follower: long-polls the device's snapshot, applies each new one,
and keeps the last good one on disk and in force while the controller is away
(fail-static).

It is a small state machine. :func:`step` is the pure core: given the
follower's :class:`FollowerState` and one :data:`Event` (what the controller
answered, or what applying did), it returns the next state and the
:data:`Action` list to carry out (apply, save the cache, wait, tear down, log).
It does no I/O, reads no clock and draws no random number, so fail-static
behaviour is tested without root or network (tests/agent/test_follower.py).
:class:`SnapshotFollower` is the thin loop around it that talks to the
controller, calls the daemon's ``apply`` and sleeps.

What the core decides:

- controller unreachable: keep the last good config, retry after 0.25 s
  doubling to 1 s (8 s when the controller shows load), logged once per outage;
- 401/403 (revoked): the daemon gets a :class:`RevokedSnapshot` once (tears
  everything down) and the cached snapshot is forgotten;
- the controller going away (shutting down): reconnect at its Retry-After;
- 429/503 with Retry-After: honoured, at most 60 s (:mod:`zerogate.agent.backoff`);
- a snapshot that does not parse or does not apply: the previous state stays.
"""

from __future__ import annotations

import json
import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Generic, Literal, TypeVar

from zerogate.agent.backoff import JITTER, PUSHBACK_SPREAD, Delays, pushback
from zerogate.agent.state import DeviceIdentity, StateDir, write_private
from zerogate.model.snapshot import InvalidSnapshot, RevokedSnapshot, Snapshot, SnapshotError, parse_snapshot
from zerogate.netops.controller_api import ApiError, ControllerClient, ControllerError, ControllerUnreachable

log = logging.getLogger(__name__)

WATCH_SECONDS = 25.0
REFUSED_RETRY_CAP = 30.0  # seconds between asks while the controller's snapshots are refused
# The controller's answer to a watch cut short by its shutdown (controller.api.config.GOING_AWAY).
GOING_AWAY = "controller going away"

S = TypeVar("S", bound=Snapshot)


POLL_DELAYS = Delays()
# A refused snapshot (another schema major, a controller bug) stays refused until
# someone upgrades: ask again, but slower and slower, not four times a second.
REFUSED_DELAYS = Delays(first=1.0, cap=REFUSED_RETRY_CAP)


def is_going_away(exc: ApiError) -> bool:
    """True for the controller's "I am shutting down" answer to a watch (503)."""
    return exc.status == 503 and exc.message.startswith(GOING_AWAY)


# --------------------------------------------------------------------------- events


ApplyReason = Literal["answer", "deadline", "cache"]


@dataclass(frozen=True)
class CacheLoaded(Generic[S]):
    """At start: the last good snapshot from ``snapshot.json``."""

    snapshot: S


@dataclass(frozen=True)
class SnapshotReceived(Generic[S]):
    """The controller answered with a snapshot this device understands."""

    snapshot: S


@dataclass(frozen=True)
class SnapshotInvalid:
    """The controller answered with a snapshot that does not parse."""

    revision: object
    error: str


@dataclass(frozen=True)
class NotModified:
    """The long-poll ended without a new revision."""


@dataclass(frozen=True)
class DeadlinePassed:
    """The long-poll ended without a new revision, and the plan's deadline has passed."""


@dataclass(frozen=True)
class Refused:
    """401/403: the controller no longer accepts this device."""

    message: str


@dataclass(frozen=True)
class GoingAway:
    """The controller cut the watch short because it is shutting down."""

    retry_after: float | None


@dataclass(frozen=True)
class ControllerFailed:
    """Any other HTTP error answer (with the Retry-After it carried, if any)."""

    status: int
    message: str
    retry_after: float | None = None


@dataclass(frozen=True)
class Unreachable:
    """No answer at all; ``busy`` when the controller accepted but cut the TLS handshake."""

    error: str
    busy: bool = False


@dataclass(frozen=True)
class Applied(Generic[S]):
    """The daemon applied ``snapshot`` (and it was cached)."""

    snapshot: S
    reason: ApplyReason


@dataclass(frozen=True)
class ApplyFailed:
    """The daemon could not apply revision ``revision``; its previous state stays."""

    revision: int
    error: str
    reason: ApplyReason


Event = (
    CacheLoaded[S]
    | SnapshotReceived[S]
    | SnapshotInvalid
    | NotModified
    | DeadlinePassed
    | Refused
    | GoingAway
    | ControllerFailed
    | Unreachable
    | Applied[S]
    | ApplyFailed
)


# --------------------------------------------------------------------------- actions


@dataclass(frozen=True)
class Apply(Generic[S]):
    """Hand ``snapshot`` to the daemon, then cache it; report back Applied or ApplyFailed."""

    snapshot: S
    reason: ApplyReason


@dataclass(frozen=True)
class Wait:
    """Sleep ``seconds`` times a random factor within ``spread`` (or until stopped)."""

    seconds: float
    spread: tuple[float, float] = JITTER


@dataclass(frozen=True)
class TearDown(Generic[S]):
    """Revoked: hand the daemon the revoked marker of ``last`` and forget the cached snapshot."""

    last: S


@dataclass(frozen=True)
class SaveCache(Generic[S]):
    """Keep ``snapshot`` in ``snapshot.json`` (0600); report ApplyFailed when that fails."""

    snapshot: S
    reason: ApplyReason


@dataclass(frozen=True)
class Log:
    level: int
    message: str
    args: tuple[object, ...] = ()


Action = Apply[S] | Wait | TearDown[S] | SaveCache[S] | Log


# --------------------------------------------------------------------------- state and step


@dataclass(frozen=True)
class FollowerState(Generic[S]):
    role: str
    controller_url: str
    snapshot: S | None = None  # the last good snapshot (applied and cached)
    connected: bool = False
    revoked: bool = False
    attempt: int = 0  # backoff step while the controller is away or failing
    refused_attempt: int = 0  # backoff step while its snapshots are refused
    refusing: bool = False  # the last answer was a snapshot that did not parse ...
    refused_revision: object = None  # ... of this revision (said once at error level)

    @property
    def after(self) -> int:
        return self.snapshot.revision if self.snapshot is not None else -1


def poll_after(state: FollowerState[S], now: datetime) -> int:
    """The revision to ask beyond: -1 (anything) when there is none, or when a time
    window opened or closed and the policy must be compiled anew."""
    valid_until = state.snapshot.policy_valid_until if state.snapshot is not None else None
    if valid_until is not None and valid_until <= now:
        return -1
    return state.after


def poll_wait(now: datetime, due: datetime | None, watch: float = WATCH_SECONDS) -> float:
    """How long the long-poll may last: ``watch`` seconds, or until the plan's deadline."""
    if due is None:
        return watch
    return max(0.0, min(watch, (due - now).total_seconds()))


def _backoff(state: FollowerState[S], *, busy: bool = False) -> tuple[FollowerState[S], Wait]:
    wait = Wait(POLL_DELAYS.base(state.attempt, busy=busy))
    return replace(state, attempt=state.attempt + 1), wait


def _revision_text(after: int) -> object:
    return after if after >= 0 else "none"


def step(state: FollowerState[S], event: Event[S]) -> tuple[FollowerState[S], list[Action[S]]]:
    """The follower's next state and what to do, for one event. Pure."""
    if isinstance(event, CacheLoaded):
        msg = "applying the last good snapshot (revision %s) while contacting the controller"
        return state, [Log(logging.INFO, msg, (event.snapshot.revision,)), Apply(event.snapshot, "cache")]
    if isinstance(event, Applied):
        return replace(state, snapshot=event.snapshot), [SaveCache(event.snapshot, event.reason)]
    if isinstance(event, ApplyFailed):
        return _apply_failed(state, event)
    if isinstance(event, (Refused, GoingAway, ControllerFailed)):
        return _error_answer(state, event)
    if isinstance(event, Unreachable):
        actions: list[Action[S]] = []
        if state.connected or state.attempt == 0:
            msg = "controller unreachable (%s); keeping the last good config (revision %s)"
            actions.append(Log(logging.WARNING, msg, (event.error, _revision_text(state.after))))
        state, wait = _backoff(replace(state, connected=False), busy=event.busy)
        return state, [*actions, wait]
    # Any answer: the controller is there again.
    actions = []
    if not state.connected:
        actions.append(Log(logging.INFO, "connected to the controller at %s", (state.controller_url,)))
    state = replace(state, connected=True, revoked=False, attempt=0)
    if isinstance(event, NotModified):
        return state, actions
    if isinstance(event, DeadlinePassed):
        if state.snapshot is not None:
            actions.append(Apply(state.snapshot, "deadline"))  # re-plan for the passing deadline
        return state, actions
    if isinstance(event, SnapshotInvalid):
        level = (
            logging.DEBUG if state.refusing and event.revision == state.refused_revision else logging.ERROR
        )
        msg = "refused the controller's snapshot (keeping the previous state): %s"
        wait = Wait(REFUSED_DELAYS.base(state.refused_attempt))
        state = replace(
            state, refusing=True, refused_revision=event.revision, refused_attempt=state.refused_attempt + 1
        )
        return state, [*actions, Log(level, msg, (event.error,)), wait]
    state = replace(state, refusing=False, refused_revision=None, refused_attempt=0)
    return state, [*actions, Apply(event.snapshot, "answer")]


def _apply_failed(state: FollowerState[S], event: ApplyFailed) -> tuple[FollowerState[S], list[Action[S]]]:
    if event.reason == "cache":
        return state, [Log(logging.ERROR, "could not apply the cached snapshot: %s", (event.error,))]
    if event.reason == "deadline":
        log_line = Log(
            logging.ERROR, "could not re-plan at a deadline (keeping the current state): %s", (event.error,)
        )
    else:
        msg = "could not apply revision %s (keeping the previous state): %s"
        log_line = Log(logging.ERROR, msg, (event.revision, event.error))
    state, wait = _backoff(state)
    return state, [log_line, wait]


def _error_answer(
    state: FollowerState[S], event: Refused | GoingAway | ControllerFailed
) -> tuple[FollowerState[S], list[Action[S]]]:
    actions: list[Action[S]] = []
    if isinstance(event, Refused):
        if not state.revoked:
            msg = "the controller refuses this %s: %s"
            actions.append(Log(logging.ERROR, msg, (state.role, event.message)))
        if state.snapshot is not None:
            actions.append(TearDown(state.snapshot))
        state = replace(state, revoked=True, snapshot=None)
        status, retry_after = 403, None
    elif isinstance(event, GoingAway):
        if state.connected:
            msg = (
                "controller going away (it is shutting down); keeping the current config "
                "(revision %s) and reconnecting as soon as it is back"
            )
            actions.append(Log(logging.INFO, msg, (_revision_text(state.after),)))
        state = replace(state, connected=False)
        status, retry_after = 503, event.retry_after
    else:
        status, retry_after = event.status, event.retry_after
        if status in (429, 503) and retry_after is not None:
            msg = "controller busy (%s); asked to retry after %.0f s"
            actions.append(Log(logging.WARNING, msg, (event.message, retry_after)))
        else:
            actions.append(Log(logging.WARNING, "controller error: %s", (event.message,)))
    if status in (429, 503) and retry_after is not None:
        return state, [*actions, Wait(pushback(retry_after), PUSHBACK_SPREAD)]
    state, wait = _backoff(state, busy=status >= 500)
    return state, [*actions, wait]


# --------------------------------------------------------------------------- the I/O loop


def answer_error(exc: ControllerError) -> Refused | GoingAway | ControllerFailed | Unreachable:
    """A failed request as the event the core understands."""
    if isinstance(exc, ApiError):
        if exc.status in (401, 403):
            return Refused(exc.message)
        if is_going_away(exc):
            return GoingAway(exc.retry_after)
        return ControllerFailed(exc.status, exc.message, exc.retry_after)
    return Unreachable(str(exc), busy=isinstance(exc, ControllerUnreachable) and exc.busy)


class SnapshotFollower(Generic[S]):
    """Long-polls the device's snapshot and hands each new one to ``apply``.

    Each answer is parsed once into ``schema`` (the device role's snapshot
    type); one that does not parse is refused like one that fails to apply:
    the previous state stays, and the error is logged. The last snapshot
    that applied cleanly is kept in ``snapshot.json``; at start, and whenever
    the controller is unreachable, the data plane keeps running on it.
    ``deadline`` (a callable returning when the plan changes by itself: a
    session ending, a time window opening) bounds each wait.
    """

    def __init__(
        self,
        identity: DeviceIdentity,
        schema: type[S],
        apply: Callable[[S | RevokedSnapshot], None],
        deadline: Callable[[], datetime | None] = lambda: None,
        *,
        watch_seconds: float | None = None,
    ) -> None:
        self.identity = identity
        self.schema = schema
        self.apply = apply
        self.deadline = deadline
        self.watch = WATCH_SECONDS if watch_seconds is None else watch_seconds
        self.path = identity.state / StateDir.SNAPSHOT
        self.state: FollowerState[S] = FollowerState(identity.role, identity.controller_url)

    # What the daemons and `zerogate client` read (and the client seeds at 'up').
    @property
    def snapshot(self) -> S | None:
        return self.state.snapshot

    @snapshot.setter
    def snapshot(self, snapshot: S | None) -> None:
        self.state = replace(self.state, snapshot=snapshot)

    @property
    def connected(self) -> bool:
        return self.state.connected

    @property
    def revoked(self) -> bool:
        return self.state.revoked

    def parse(self, data: object) -> S:
        """``data`` (the controller's JSON, parsed) as this device's snapshot type."""
        snap = parse_snapshot(self.identity.role, data)
        if not isinstance(snap, self.schema):
            raise InvalidSnapshot(f"a {snap.role} snapshot, but this follower runs a {self.identity.role}")
        return snap

    def load_cached(self) -> S | None:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except ValueError:
            log.warning("ignoring a damaged %s", self.path)
            return None
        try:
            return self.parse(data)
        except SnapshotError as exc:
            log.warning("ignoring %s: %s", self.path, exc)
            return None

    def handle(self, event: Event[S], stop: threading.Event) -> None:
        """Feed ``event`` to the core and carry out what it asks (events it causes included)."""
        pending: list[Event[S]] = [event]
        while pending:
            self.state, actions = step(self.state, pending.pop(0))
            for action in actions:
                if isinstance(action, Log):
                    log.log(action.level, action.message, *action.args)
                elif isinstance(action, Wait):
                    stop.wait(action.seconds * random.uniform(*action.spread))  # noqa: S311 - jitter
                elif isinstance(action, Apply):
                    pending.append(self._apply(action))
                elif isinstance(action, SaveCache):
                    pending.extend(self._save(action))
                else:
                    self._tear_down(action.last)

    def _apply(self, action: Apply[S]) -> Event[S]:
        snap = action.snapshot
        try:
            self.apply(snap)
        except Exception as exc:  # the previous state stays; the core decides when to retry
            return ApplyFailed(snap.revision, str(exc), action.reason)
        return Applied(snap, action.reason)

    def _save(self, action: SaveCache[S]) -> list[Event[S]]:
        """A cache that cannot be written counts as a failed apply (logged, retried
        later), though the daemon runs the new revision."""
        snap = action.snapshot
        try:
            write_private(self.path, json.dumps(snap.model_dump(mode="json"), sort_keys=True))
        except Exception as exc:
            return [ApplyFailed(snap.revision, str(exc), action.reason)]
        return []

    def _tear_down(self, last: S) -> None:
        """A revoked device keeps nothing: hand the daemon the revoked marker."""
        try:
            self.apply(RevokedSnapshot.of(last))
        finally:
            self.path.unlink(missing_ok=True)

    def poll(self, api: ControllerClient) -> Event[S]:
        """One long-poll, as the event it ended with."""
        now = datetime.now(UTC)
        due = self.deadline()
        wait = poll_wait(now, due, self.watch)
        try:
            answer = api.get(
                "/v1/snapshot",
                {"after": poll_after(self.state, now), "wait": round(wait, 3)},
                timeout=wait + 10,
            )
        except ControllerError as exc:
            return answer_error(exc)
        if answer is None:
            passed = due is not None and due <= datetime.now(UTC) and self.state.snapshot is not None
            return DeadlinePassed() if passed else NotModified()
        try:
            return SnapshotReceived(self.parse(answer))
        except SnapshotError as exc:
            revision = answer.get("revision") if isinstance(answer, dict) else None
            return SnapshotInvalid(revision, str(exc))

    def run(self, stop: threading.Event) -> None:
        cached = self.load_cached()
        if cached is not None:
            self.handle(CacheLoaded(cached), stop)
        with self.identity.client(timeout=self.watch + 10) as api:
            while not stop.is_set():
                self.handle(self.poll(api), stop)
