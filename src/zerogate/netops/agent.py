"""What the gateway and connector daemons share: their enrolled identity and a
snapshot follower that parses each snapshot once and keeps the last good one
on disk (fail-static)."""

from __future__ import annotations

import json
import logging
import os
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, TypeVar

from zerogate.model.snapshot import InvalidSnapshot, RevokedSnapshot, Snapshot, SnapshotError, parse_snapshot
from zerogate.netops.controller_api import ApiError, ControllerClient, ControllerError, ControllerUnreachable

log = logging.getLogger(__name__)

WATCH_SECONDS = 25.0

S = TypeVar("S", bound=Snapshot)
_NOTHING_REFUSED = object()  # no answer refused since the last good one
REFUSED_RETRY_CAP = 30.0  # seconds between asks while the controller's snapshots are refused


class NotEnrolled(RuntimeError):
    pass


@dataclass(frozen=True)
class DeviceIdentity:
    state_dir: Path
    role: str
    name: str
    device_id: int
    controller_url: str
    ca_pem: bytes
    credential: str
    wg_private_key: str

    @classmethod
    def load(cls, state_dir: Path, role: str) -> DeviceIdentity:
        marker = state_dir / "device.json"
        if not marker.exists():
            raise NotEnrolled(
                f"{state_dir} holds no enrolled {role}: run 'zerogate {role} enroll <install-string>' first"
            )
        info = json.loads(marker.read_text())
        if info.get("role") != role:
            raise NotEnrolled(f"{state_dir} holds a {info.get('role')}, not a {role}")
        for secret in ("credential", "wg.key"):
            mode = (state_dir / secret).stat().st_mode & 0o077
            if mode:
                raise NotEnrolled(f"{state_dir / secret} is readable by others: chmod 600 it")
        return cls(
            state_dir=state_dir,
            role=role,
            name=str(info["name"]),
            device_id=int(info["device_id"]),
            controller_url=str(info["controller_url"]),
            ca_pem=(state_dir / "ca.pem").read_bytes(),
            credential=(state_dir / "credential").read_text().strip(),
            wg_private_key=(state_dir / "wg.key").read_text().strip(),
        )

    def client(self, timeout: float = WATCH_SECONDS + 10) -> ControllerClient:
        return ControllerClient(self.controller_url, self.ca_pem, token=self.credential, timeout=timeout)


def write_private(path: Path, data: str, mode: int = 0o600) -> None:
    """Atomically replace ``path`` with ``data`` (mode 0600 unless told otherwise)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(data)
    os.replace(tmp, path)


MAX_PUSHBACK = 60.0  # the longest Retry-After a device honours
# The controller's answer to a watch cut short by its shutdown (api_devices.GOING_AWAY).
GOING_AWAY = "controller going away"


class Backoff:
    """How long to wait before the next try: 0.25 s doubling to ``cap`` (1 s), +-25 %.

    The cap is low on purpose: a refused connection costs a stopped controller
    nothing, and a device must pick up changes (a revocation) within about 2 s
    of the controller coming back. Worst case, a device that lost the
    controller reconnects ``1.25 * cap`` (1.25 s) after it listens again, plus
    one request.

    The wait rises only when the controller shows load, so a crowd of devices
    slows down exactly when it must:

    - ``busy=True`` (an HTTP 5xx without ``Retry-After``, a TLS handshake the
      server cut: signs of a controller that accepts but cannot keep up): the
      same doubling up to ``busy_cap`` (8 s) instead;
    - a 429/503 with ``Retry-After`` (the controller's own pushback): honoured
      as given (at most ``MAX_PUSHBACK``), spread by +0..25 % so devices told
      the same number do not come back in step; then the worst case is 75 s.
    """

    def __init__(self, first: float = 0.25, cap: float = 1.0, busy_cap: float = 8.0) -> None:
        self.first = first
        self.cap = cap
        self.busy_cap = max(cap, busy_cap)
        self.attempt = 0

    def next(self, retry_after: float | None = None, *, busy: bool = False) -> float:
        if retry_after is not None:
            return min(MAX_PUSHBACK, max(0.0, retry_after)) * random.uniform(1.0, 1.25)  # noqa: S311
        cap = self.busy_cap if busy else self.cap
        base = min(cap, self.first * 2 ** min(self.attempt, 32))  # bounded: no float overflow
        self.attempt += 1
        return float(base * random.uniform(0.75, 1.25))  # noqa: S311 - jitter, not a secret

    def reset(self) -> None:
        self.attempt = 0


def is_going_away(exc: ApiError) -> bool:
    """True for the controller's "I am shutting down" answer to a watch (503)."""
    return exc.status == 503 and exc.message.startswith(GOING_AWAY)


REPORT_INTERVAL = 5.0


def report_loop(identity: DeviceIdentity, build: Callable[[], dict[str, Any]], stop: threading.Event) -> None:
    """POST ``build()`` to /v1/report every few seconds until ``stop``; never raises.

    One client for the whole loop: its kept-alive connection (60 s, see
    controller_api) outlives the interval, so reports share one TLS connection.
    """
    with identity.client(timeout=10) as api:
        while not stop.wait(REPORT_INTERVAL):
            try:
                api.post("/v1/report", build())
            except ControllerError as exc:
                log.debug("report not delivered: %s", exc)
            except Exception as exc:  # reporting must never stop the data plane
                log.warning("could not build the status report: %s", exc)


def save_identity(
    state_dir: Path,
    *,
    key_pem: bytes,
    wg_private: str,
    credential: str,
    certificate: str,
    ca_pem: bytes,
    info: dict[str, Any],
) -> None:
    """Write an enrolled device's state: secrets 0600, then ``device.json`` last (the marker)."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(state_dir, 0o700)
    write_private(state_dir / "device.key", key_pem.decode())
    write_private(state_dir / "wg.key", wg_private + "\n")
    write_private(state_dir / "credential", credential + "\n")
    write_private(state_dir / "device.pem", certificate, 0o644)
    write_private(state_dir / "ca.pem", ca_pem.decode(), 0o644)
    write_private(state_dir / "device.json", json.dumps(info, indent=2) + "\n", 0o644)


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
    ) -> None:
        self.identity = identity
        self.schema = schema
        self.apply = apply
        self.deadline = deadline
        self.path = identity.state_dir / "snapshot.json"
        self.snapshot: S | None = None
        self.connected = False
        self.revoked = False
        self._refused_revision: object = _NOTHING_REFUSED

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

    def _accept(self, snap: S) -> None:
        self.apply(snap)
        self.snapshot = snap
        write_private(self.path, json.dumps(snap.model_dump(mode="json"), sort_keys=True))

    def _parse_answer(self, data: object) -> S | None:
        """The parsed answer, or None (logged: once per revision at error level) when it is refused."""
        try:
            snap = self.parse(data)
        except SnapshotError as exc:
            revision = data.get("revision") if isinstance(data, dict) else None
            level = logging.DEBUG if revision == self._refused_revision else logging.ERROR
            self._refused_revision = revision
            log.log(level, "refused the controller's snapshot (keeping the previous state): %s", exc)
            return None
        self._refused_revision = _NOTHING_REFUSED
        return snap

    def run(self, stop: threading.Event) -> None:
        cached = self.load_cached()
        if cached is not None:
            log.info(
                "applying the last good snapshot (revision %s) while contacting the controller",
                cached.revision,
            )
            try:
                self._accept(cached)
            except Exception as exc:
                log.error("could not apply the cached snapshot: %s", exc)
        backoff = Backoff()
        # A refused snapshot (another schema major, a controller bug) stays refused until
        # someone upgrades: ask again, but slower and slower, not four times a second.
        refused = Backoff(first=1.0, cap=REFUSED_RETRY_CAP)
        with self.identity.client() as api:
            while not stop.is_set():
                now = datetime.now(UTC)
                due = self.deadline()
                wait = WATCH_SECONDS
                if due is not None:
                    wait = max(0.0, min(wait, (due - now).total_seconds()))
                after = self.snapshot.revision if self.snapshot else -1
                valid_until = self.snapshot.policy_valid_until if self.snapshot else None
                if valid_until is not None and valid_until <= now:
                    after = -1  # a time window opened or closed: the policy must be compiled anew
                try:
                    answer = api.get(
                        "/v1/snapshot", {"after": after, "wait": round(wait, 3)}, timeout=wait + 10
                    )
                except ApiError as exc:
                    stop.wait(self._refused(exc, backoff, after))
                    continue
                except ControllerError as exc:
                    if self.connected or backoff.attempt == 0:
                        log.warning(
                            "controller unreachable (%s); keeping the last good config (revision %s)",
                            exc,
                            after if after >= 0 else "none",
                        )
                    self.connected = False
                    stop.wait(backoff.next(busy=isinstance(exc, ControllerUnreachable) and exc.busy))
                    continue
                if not self.connected:
                    log.info("connected to the controller at %s", self.identity.controller_url)
                self.connected, self.revoked = True, False
                backoff.reset()
                if answer is None:
                    if due is not None and due <= datetime.now(UTC) and self.snapshot is not None:
                        try:
                            self._accept(self.snapshot)  # re-plan for the passing deadline
                        except Exception as exc:  # previous state stays; retry later
                            log.error("could not re-plan at a deadline (keeping the current state): %s", exc)
                            stop.wait(backoff.next())
                    continue
                snap = self._parse_answer(answer)
                if snap is None:
                    stop.wait(refused.next())
                    continue
                refused.reset()
                try:
                    self._accept(snap)
                except Exception as exc:
                    log.error(
                        "could not apply revision %s (keeping the previous state): %s", snap.revision, exc
                    )
                    stop.wait(backoff.next())

    def _refused(self, exc: ApiError, backoff: Backoff, after: int) -> float:
        """Handle an error answer; return how long to wait before asking again."""
        if exc.status in (401, 403):
            if not self.revoked:
                log.error("the controller refuses this %s: %s", self.identity.role, exc.message)
            self.revoked = True
            self._on_revoked()
        elif is_going_away(exc):
            if self.connected:
                log.info(
                    "controller going away (it is shutting down); keeping the current config "
                    "(revision %s) and reconnecting as soon as it is back",
                    after if after >= 0 else "none",
                )
            self.connected = False
        elif exc.status in (429, 503) and exc.retry_after is not None:
            log.warning("controller busy (%s); asked to retry after %.0f s", exc.message, exc.retry_after)
        else:
            log.warning("controller error: %s", exc.message)
        pushback = exc.retry_after if exc.status in (429, 503) else None
        return backoff.next(pushback, busy=exc.status >= 500)

    def _on_revoked(self) -> None:
        """A revoked device keeps nothing: hand the daemon the revoked marker."""
        if self.snapshot is not None:
            try:
                self.apply(RevokedSnapshot.of(self.snapshot))
            finally:
                self.snapshot = None
                self.path.unlink(missing_ok=True)
