"""The fail-static snapshot follower against a real controller (``controller``/``admin`` fixtures) and a
gateway enrolled with the real CLI code path.

Every wait is bounded; the long-poll is shortened to 1 s so a follower stops
promptly once its ``threading.Event`` is set.
"""

from __future__ import annotations

import json
import logging
import queue
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from zerogate.agent import follower as agent
from zerogate.agent.follower import SnapshotFollower
from zerogate.agent.state import DeviceIdentity
from zerogate.cli.device import enroll_device
from zerogate.model.snapshot import SCHEMA_VERSION, GatewaySnapshot, InvalidSnapshot, RevokedSnapshot
from zerogate.testbed.localrun import AccountSession

_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")
WATCH = 1.0


@pytest.fixture(autouse=True)
def _short_watch_no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # everything here talks to 127.0.0.1; a proxy from the developer's shell must not interfere
    for name in _PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(agent, "WATCH_SECONDS", WATCH)


# --------------------------------------------------------------------------- against a controller


@pytest.fixture
def enrolled(admin: AccountSession, unique: Callable[[str], str], tmp_path: Path) -> Path:
    """The state directory of a gateway enrolled through the CLI's enrollment code."""
    name = unique("gw")
    admin.client.post("/v1/gateways", {"name": name, "public_endpoint": "gw.example.test"})
    created = admin.client.post(f"/v1/gateways/{name}/provisioning-keys", {})
    state = tmp_path / "gateway"
    enroll_device("gateway", created["install_string"], name, state, force=False)
    return state


class Running:
    """A SnapshotFollower on its own thread; every snapshot it applies lands in ``applied``."""

    def __init__(
        self,
        state: Path,
        deadline: Callable[[], datetime | None] = lambda: None,
        fail_on: Callable[[int], bool] = lambda n: False,
    ) -> None:
        self.identity = DeviceIdentity.load(state, "gateway")
        self.applied: queue.Queue[dict[str, Any]] = queue.Queue()
        self.calls = 0
        self.fail_on = fail_on
        self.follower = SnapshotFollower(self.identity, GatewaySnapshot, self._apply, deadline)
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _apply(self, snapshot: GatewaySnapshot | RevokedSnapshot) -> None:
        self.calls += 1
        self.applied.put(snapshot.model_dump(mode="json"))  # what the controller sent, as JSON
        if self.fail_on(self.calls):
            raise RuntimeError("nft refused the ruleset")

    def _run(self) -> None:
        try:
            self.follower.run(self.stop)
        except BaseException as exc:
            self.error = exc

    def next(self, timeout: float) -> dict[str, Any]:
        try:
            return self.applied.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(
                f"nothing applied within {timeout:.0f} s (follower error: {self.error})"
            ) from None

    def quiet_for(self, seconds: float) -> bool:
        try:
            extra = self.applied.get(timeout=seconds)
        except queue.Empty:
            return True
        raise AssertionError(f"unexpected apply of revision {extra.get('revision')}")

    def close(self) -> None:
        self.stop.set()
        self.thread.join(WATCH + 15)
        assert not self.thread.is_alive(), "the follower did not stop within the long-poll time"
        assert self.error is None, f"the follower crashed: {self.error!r}"


@pytest.fixture
def follow() -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def start(state: Path, **kw: Any) -> Running:
        started.append(Running(state, **kw))
        return started[-1]

    try:
        yield start
    finally:
        for r in started:
            r.stop.set()
        for r in started:
            r.thread.join(WATCH + 15)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def point_at(state: Path, url: str) -> None:
    info = json.loads((state / "device.json").read_text())
    (state / "device.json").write_text(json.dumps(info | {"controller_url": url}))


def test_follower_applies_the_snapshot_keeps_it_0600_and_follows_changes(
    enrolled: Path, admin: AccountSession, unique: Callable[[str], str], follow: Callable[..., Running]
) -> None:
    run = follow(enrolled)
    first = run.next(15)
    identity = run.identity
    assert (first["role"], first["device_id"], first["name"]) == (
        "gateway",
        identity.device_id,
        identity.name,
    )
    assert "policy" in first and "clients" in first and first["schema_version"] == SCHEMA_VERSION
    assert isinstance(run.follower.snapshot, GatewaySnapshot)
    cached = enrolled / "snapshot.json"
    wait_until(cached.exists, "snapshot.json")
    assert stat.S_IMODE(cached.stat().st_mode) == 0o600
    assert json.loads(cached.read_text()) == first
    wait_until(lambda: run.follower.connected, "the follower to say it is connected")

    admin.client.post("/v1/connector-groups", {"name": unique("grp"), "subnets": ["10.123.0.0/24"]})
    second = run.next(10)  # the long-poll returns with the change
    assert second["revision"] > first["revision"]
    wait_until(lambda: json.loads(cached.read_text())["revision"] == second["revision"], "the cache update")
    assert run.quiet_for(WATCH * 1.5)  # nothing changed: nothing is applied again
    run.close()


def test_fail_static_with_the_controller_unreachable_applies_the_cached_snapshot_and_keeps_trying(
    enrolled: Path, follow: Callable[..., Running]
) -> None:
    online = follow(enrolled)
    good = online.next(15)
    wait_until((enrolled / "snapshot.json").exists, "snapshot.json")
    online.close()

    port = closed_port()
    point_at(enrolled, f"https://127.0.0.1:{port}")
    offline = follow(enrolled)
    assert offline.next(5) == good  # at once, before any answer from a controller
    assert not offline.follower.connected

    # it keeps dialling: open the port and count the attempts that arrive (each is then hung up on)
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(8)
        listener.settimeout(10)
        for _ in range(2):
            conn, _ = listener.accept()
            conn.close()
    assert offline.quiet_for(0.2)  # still running on the cached snapshot, nothing new applied
    assert json.loads((enrolled / "snapshot.json").read_text()) == good
    assert not offline.follower.connected and not offline.follower.revoked
    offline.close()


def test_a_damaged_cache_is_ignored(enrolled: Path, follow: Callable[..., Running]) -> None:
    (enrolled / "snapshot.json").write_text('{"revision": 3, "role": "gatew')
    point_at(enrolled, f"https://127.0.0.1:{closed_port()}")
    run = follow(enrolled)
    assert run.quiet_for(1.0)
    assert run.follower.snapshot is None
    run.close()


def test_a_snapshot_that_does_not_parse_is_refused_and_the_previous_state_kept(
    enrolled: Path,
    admin: AccountSession,
    unique: Callable[[str], str],
    follow: Callable[..., Running],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    run = follow(enrolled)
    first = run.next(15)
    cached = enrolled / "snapshot.json"
    wait_until(cached.exists, "snapshot.json")
    real, broken = agent.parse_snapshot, threading.Event()
    broken.set()

    def parse(role: str, data: Any) -> Any:
        if broken.is_set() and data["revision"] > first["revision"]:
            raise InvalidSnapshot("the gateway snapshot is not valid: clients.0.address: expected text")
        return real(role, data)

    monkeypatch.setattr(agent, "parse_snapshot", parse)
    caplog.set_level(logging.DEBUG, logger=agent.__name__)
    admin.client.post("/v1/connector-groups", {"name": unique("grp"), "subnets": ["10.124.0.0/24"]})
    refusals = lambda: [r for r in caplog.records if "refused the controller's snapshot" in r.getMessage()]  # noqa: E731
    wait_until(lambda: len(refusals()) >= 2, "the new revision to be refused twice")
    assert run.quiet_for(0.2)  # refused, never applied
    assert run.follower.snapshot is not None and run.follower.snapshot.revision == first["revision"]
    assert json.loads(cached.read_text()) == first
    # said once as an error (what and that the previous state stays), then quietly on each retry
    assert [r.levelno for r in refusals()][:2] == [logging.ERROR, logging.DEBUG]
    assert "keeping the previous state" in refusals()[0].getMessage()
    assert "clients.0.address: expected text" in refusals()[0].getMessage()

    broken.clear()  # a snapshot this device understands again: applied on the next try
    assert run.next(10)["revision"] > first["revision"]
    run.close()


def test_a_revoked_device_applies_the_revoked_marker_and_forgets_its_snapshot(
    enrolled: Path, admin: AccountSession, follow: Callable[..., Running]
) -> None:
    run = follow(enrolled)
    first = run.next(15)
    cached = enrolled / "snapshot.json"
    wait_until(cached.exists, "snapshot.json")

    admin.client.post(f"/v1/devices/{run.identity.device_id}/revoke")
    marker = run.next(10)
    assert marker == {
        "role": "gateway",
        "device_id": first["device_id"],
        "name": first["name"],
        "revision": -1,
        "revoked": True,
    }
    wait_until(lambda: not cached.exists(), "snapshot.json to be removed")
    assert run.follower.revoked and run.follower.snapshot is None
    assert run.quiet_for(WATCH * 1.5)  # told once, not on every refused poll
    run.close()


def test_a_passing_deadline_re_applies_the_current_snapshot(
    enrolled: Path, follow: Callable[..., Running]
) -> None:
    due = datetime.now(UTC) + timedelta(seconds=0.5)
    run = follow(enrolled, deadline=lambda: due)
    first = run.next(15)
    again = run.next(5)  # no new revision: the deadline (a session ending) alone re-plans
    assert again == first
    run.close()


def test_a_failing_re_plan_at_a_deadline_does_not_stop_the_follower(
    enrolled: Path, follow: Callable[..., Running]
) -> None:
    due = datetime.now(UTC) + timedelta(seconds=0.5)
    run = follow(enrolled, deadline=lambda: due, fail_on=lambda n: n == 2)
    run.next(15)
    run.next(5)  # the re-plan at the deadline, which fails
    wait_until(lambda: run.calls >= 3 or not run.thread.is_alive(), "another attempt or the end of run()")
    assert run.error is None, f"run() ended with {run.error!r}"
    assert run.thread.is_alive()
    run.close()
