"""The snapshot follower's pure core (``step``): fail-static decisions without a
controller, a network or root. The loop around it is tested against a real
controller in test_follower_live.py."""

from __future__ import annotations

import json
import logging
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from zerogate.agent.backoff import MAX_PUSHBACK, Backoff
from zerogate.agent.follower import (
    Action,
    Applied,
    ApplyFailed,
    CacheLoaded,
    ControllerFailed,
    DeadlinePassed,
    FollowerState,
    GoingAway,
    Log,
    NotModified,
    Refused,
    SaveCache,
    SnapshotFollower,
    SnapshotInvalid,
    SnapshotReceived,
    TearDown,
    Unreachable,
    Wait,
    answer_error,
    poll_after,
    poll_wait,
    step,
)
from zerogate.agent.follower import Apply as ApplyAction
from zerogate.agent.state import DeviceIdentity
from zerogate.model.snapshot import GatewaySnapshot, RevokedSnapshot, parse_snapshot
from zerogate.netops.controller_api import ApiError, ControllerUnreachable

CACHE: dict[str, Any] = {
    "revision": 12,
    "role": "gateway",
    "device_id": 7,
    "name": "edge",
    "gateway": {
        "name": "edge",
        "public_endpoint": "gw.example.test",
        "port_first": 51820,
        "port_last": 51830,
    },
    "tunnel_addresses": ["100.64.0.1"],
    "client_blocks": ["100.64.0.0/16"],
    "connectors": [],
    "clients": [],
    "policy": {"grants": [], "valid_until": None},
}
URL = "https://controller.example.test"
State = FollowerState[GatewaySnapshot]


def snapshot(revision: int = 12, valid_until: datetime | None = None) -> GatewaySnapshot:
    policy = {"grants": [], "valid_until": valid_until.isoformat() if valid_until else None}
    return parse_snapshot("gateway", CACHE | {"revision": revision, "policy": policy})


def fresh(**kw: Any) -> State:
    return FollowerState("gateway", URL, **kw)


def logs(actions: list[Action[GatewaySnapshot]]) -> list[tuple[int, str]]:
    return [(a.level, a.message % a.args) for a in actions if isinstance(a, Log)]


def waits(actions: list[Action[GatewaySnapshot]]) -> list[Wait]:
    return [a for a in actions if isinstance(a, Wait)]


def run(state: State, events: list[Any]) -> tuple[State, list[Action[GatewaySnapshot]]]:
    """Feed ``events`` in turn; all actions, in order."""
    out: list[Action[GatewaySnapshot]] = []
    for event in events:
        state, actions = step(state, event)
        out += actions
    return state, out


# --------------------------------------------------------------------------- backoff


def test_backoff_starts_at_a_quarter_second_and_caps_at_one_second_with_jitter() -> None:
    b = Backoff()
    for wait, base in zip([b.next() for _ in range(6)], [0.25, 0.5, 1, 1, 1, 1], strict=True):
        assert 0.75 * base <= wait <= 1.25 * base
    # a long outage: the wait stays at the cap (worst-case reconnect 1.25 s), and never overflows
    assert all(0.75 <= b.next() <= 1.25 for _ in range(2000))
    b.reset()
    assert b.next() <= 0.3125


def test_backoff_honours_retry_after_bounded_and_spread() -> None:
    b = Backoff()
    assert all(5.0 <= b.next(retry_after=5) <= 6.25 for _ in range(200))
    assert all(MAX_PUSHBACK <= b.next(retry_after=86400) <= MAX_PUSHBACK * 1.25 for _ in range(50))
    assert b.next(retry_after=-3) == 0.0
    assert len({round(b.next(retry_after=10), 6) for _ in range(50)}) > 1  # a herd does not return in step


def test_backoff_rises_to_eight_seconds_only_when_the_controller_shows_load() -> None:
    b = Backoff()
    for wait, base in zip([b.next(busy=True) for _ in range(7)], [0.25, 0.5, 1, 2, 4, 8, 8], strict=True):
        assert 0.75 * base <= wait <= 1.25 * base
    # a refused connection in between (the controller restarting) goes back to the 1 s cap
    assert 0.75 <= b.next() <= 1.25


# --------------------------------------------------------------------------- controller away


def test_unreachable_keeps_the_last_good_config_says_so_once_and_backs_off_to_one_second() -> None:
    state = fresh(snapshot=snapshot(), connected=True)
    state, actions = run(state, [Unreachable("connection refused")] * 5)
    assert not any(isinstance(a, (ApplyAction, TearDown)) for a in actions)
    assert state.snapshot is not None and state.snapshot.revision == 12 and not state.connected
    assert logs(actions) == [
        (
            logging.WARNING,
            "controller unreachable (connection refused); keeping the last good config (revision 12)",
        )
    ]
    assert [w.seconds for w in waits(actions)] == [0.25, 0.5, 1.0, 1.0, 1.0]
    assert all(w.spread == (0.75, 1.25) for w in waits(actions))


def test_a_device_that_never_reached_the_controller_says_revision_none() -> None:
    _, actions = step(fresh(), Unreachable("timed out"))
    assert logs(actions) == [
        (logging.WARNING, "controller unreachable (timed out); keeping the last good config (revision none)")
    ]


def test_a_cut_tls_handshake_counts_as_load_a_refused_connection_does_not() -> None:
    state = fresh(attempt=10)
    assert waits(step(state, Unreachable("cut", busy=True))[1])[0].seconds == 8.0
    assert waits(step(state, Unreachable("refused"))[1])[0].seconds == 1.0
    error = answer_error(ControllerUnreachable("https://x", "closed during the TLS handshake", busy=True))
    assert error == Unreachable(str(error.error), busy=True)  # type: ignore[union-attr]


def test_a_5xx_counts_as_load_a_4xx_does_not() -> None:
    state = fresh(attempt=10)
    assert waits(step(state, ControllerFailed(502, "HTTP 502 Bad Gateway"))[1])[0].seconds == 8.0
    assert waits(step(state, ControllerFailed(404, "gone"))[1])[0].seconds == 1.0


def test_the_controller_coming_back_is_logged_and_the_backoff_starts_over() -> None:
    state, _ = run(fresh(snapshot=snapshot()), [Unreachable("refused")] * 3)
    state, actions = step(state, NotModified())
    assert logs(actions) == [(logging.INFO, f"connected to the controller at {URL}")]
    assert state.connected and state.attempt == 0 and not waits(actions)
    _, actions = step(state, NotModified())
    assert actions == []  # said once


def test_going_away_is_logged_once_at_info_and_retried_after_about_a_second() -> None:
    detail = "controller going away: it is shutting down; reconnect in a moment"
    event = answer_error(ApiError(503, detail, {"detail": detail}, retry_after=1.0))
    assert event == GoingAway(1.0)
    state, actions = run(fresh(snapshot=snapshot(), connected=True), [event] * 3)
    assert [(w.seconds, w.spread) for w in waits(actions)] == [(1.0, (1.0, 1.25))] * 3
    assert not state.connected and not state.revoked  # "connected" is logged again on return
    [(level, text)] = logs(actions)
    assert level == logging.INFO and text.startswith("controller going away") and "revision 12" in text


def test_retry_after_is_honoured_on_429_and_503_only_and_at_most_a_minute() -> None:
    _, actions = step(fresh(), ControllerFailed(429, "too many snapshot requests", 3.0))
    assert [(w.seconds, w.spread) for w in waits(actions)] == [(3.0, (1.0, 1.25))]
    assert logs(actions) == [
        (logging.WARNING, "controller busy (too many snapshot requests); asked to retry after 3 s")
    ]
    assert waits(step(fresh(), ControllerFailed(503, "busy", 86400.0))[1])[0].seconds == MAX_PUSHBACK
    _, actions = step(fresh(), ControllerFailed(500, "HTTP 500 Internal Server Error", 3.0))
    assert waits(actions)[0].seconds == 0.25  # Retry-After counts only on 429/503
    assert logs(actions) == [(logging.WARNING, "controller error: HTTP 500 Internal Server Error")]


# --------------------------------------------------------------------------- revoked


def test_a_refused_device_tears_down_once_and_forgets_its_snapshot() -> None:
    last = snapshot()
    assert answer_error(ApiError(401, "credential revoked", None)) == Refused("credential revoked")
    state, actions = step(fresh(snapshot=last, connected=True), Refused("device revoked"))
    assert [a for a in actions if isinstance(a, TearDown)] == [TearDown(last)]
    assert logs(actions) == [(logging.ERROR, "the controller refuses this gateway: device revoked")]
    assert state.revoked and state.snapshot is None and state.after == -1
    state, actions = step(state, Refused("device revoked"))
    assert [type(a) for a in actions] == [Wait]  # told once, not on every refused poll
    state, _ = step(state, NotModified())
    assert not state.revoked  # accepted again (re-enrolled credentials)


# --------------------------------------------------------------------------- applying


def test_a_new_snapshot_is_applied_and_becomes_the_last_good_one_only_once_applied() -> None:
    old, new = snapshot(12), snapshot(13)
    state, actions = step(fresh(snapshot=old, connected=True), SnapshotReceived(new))
    assert actions == [ApplyAction(new, "answer")]
    assert state.snapshot == old
    state, actions = step(state, Applied(new, "answer"))
    assert state.snapshot == new and actions == [SaveCache(new, "answer")]


def test_an_apply_failure_keeps_the_previous_state_and_retries_after_a_backoff() -> None:
    old = snapshot(12)
    state, actions = run(
        fresh(snapshot=old, connected=True),
        [SnapshotReceived(snapshot(13)), ApplyFailed(13, "nft refused the ruleset", "answer")],
    )
    assert state.snapshot == old and state.after == 12  # the next poll asks for 13 again
    assert logs(actions) == [
        (logging.ERROR, "could not apply revision 13 (keeping the previous state): nft refused the ruleset")
    ]
    assert [w.seconds for w in waits(actions)] == [0.25]


def test_a_snapshot_that_does_not_parse_is_refused_once_loudly_then_quietly_and_slower() -> None:
    state = fresh(snapshot=snapshot(12), connected=True)
    state, actions = run(state, [SnapshotInvalid(13, "clients.0.address: expected text")] * 7)
    assert not any(isinstance(a, ApplyAction) for a in actions)
    levels = [level for level, _ in logs(actions)]
    assert levels == [logging.ERROR] + [logging.DEBUG] * 6
    assert "keeping the previous state" in logs(actions)[0][1]
    assert [w.seconds for w in waits(actions)] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    _, actions = step(state, SnapshotInvalid(14, "another"))
    assert logs(actions)[0][0] == logging.ERROR  # a new revision is said again
    state, actions = step(state, SnapshotReceived(snapshot(14)))
    assert state.refused_attempt == 0 and not state.refusing
    assert actions == [ApplyAction(snapshot(14), "answer")]


def test_the_cached_snapshot_is_applied_at_start_and_a_failure_only_logged() -> None:
    cached = snapshot(12)
    state, actions = step(fresh(), CacheLoaded(cached))
    assert actions == [
        Log(
            logging.INFO,
            "applying the last good snapshot (revision %s) while contacting the controller",
            (12,),
        ),
        ApplyAction(cached, "cache"),
    ]
    state, actions = step(state, ApplyFailed(12, "no such device", "cache"))
    assert logs(actions) == [(logging.ERROR, "could not apply the cached snapshot: no such device")]
    assert not waits(actions) and state.snapshot is None


def test_a_passing_deadline_re_plans_the_current_snapshot_and_a_failure_backs_off() -> None:
    current = snapshot(12)
    state, actions = step(fresh(snapshot=current, connected=True), DeadlinePassed())
    assert actions == [ApplyAction(current, "deadline")]
    state, actions = step(state, ApplyFailed(12, "boom", "deadline"))
    assert logs(actions) == [
        (logging.ERROR, "could not re-plan at a deadline (keeping the current state): boom")
    ]
    assert [w.seconds for w in waits(actions)] == [0.25] and state.snapshot == current
    assert step(fresh(connected=True), DeadlinePassed())[1] == []  # nothing to re-plan


def test_the_poll_asks_for_anything_when_the_policy_went_stale() -> None:
    now = datetime(2026, 1, 1, 12, tzinfo=UTC)
    assert poll_after(fresh(), now) == -1
    assert poll_after(fresh(snapshot=snapshot(12)), now) == 12
    assert poll_after(fresh(snapshot=snapshot(12, now + timedelta(seconds=1))), now) == 12
    assert poll_after(fresh(snapshot=snapshot(12, now)), now) == -1  # a time window opened or closed


def test_the_long_poll_is_cut_short_by_a_deadline() -> None:
    now = datetime(2026, 1, 1, 12, tzinfo=UTC)
    assert poll_wait(now, None) == 25.0
    assert poll_wait(now, now + timedelta(seconds=3)) == 3.0
    assert poll_wait(now, now - timedelta(seconds=3)) == 0.0
    assert poll_wait(now, now + timedelta(hours=1), watch=1.0) == 1.0


# --------------------------------------------------------------------------- the loop, without a controller


def offline_identity(state_dir: Path) -> DeviceIdentity:
    return DeviceIdentity(state_dir, "gateway", "edge", 7, "https://127.0.0.1:1", b"", "zgd_x", "k")


def test_the_loop_caches_only_what_applied_and_tears_down_on_refusal(tmp_path: Path) -> None:
    applied: list[GatewaySnapshot | RevokedSnapshot] = []
    fail = threading.Event()

    def apply(snap: GatewaySnapshot | RevokedSnapshot) -> None:
        if fail.is_set():
            raise RuntimeError("nft refused the ruleset")
        applied.append(snap)

    follower = SnapshotFollower(offline_identity(tmp_path), GatewaySnapshot, apply)
    stop = threading.Event()
    stop.set()  # waits return at once
    follower.handle(SnapshotReceived(snapshot(12)), stop)
    cache = tmp_path / "snapshot.json"
    assert json.loads(cache.read_text())["revision"] == 12 and follower.snapshot == snapshot(12)
    assert (cache.stat().st_mode & 0o777) == 0o600

    fail.set()
    follower.handle(SnapshotReceived(snapshot(13)), stop)
    assert json.loads(cache.read_text())["revision"] == 12 and follower.snapshot == snapshot(12)

    fail.clear()
    follower.handle(Refused("device revoked"), stop)
    assert isinstance(applied[-1], RevokedSnapshot) and applied[-1].name == "edge"
    assert not cache.exists() and follower.revoked and follower.snapshot is None


def test_a_snapshot_cached_before_schema_versions_is_read_as_1_0(tmp_path: Path) -> None:
    (tmp_path / "snapshot.json").write_text(
        json.dumps(
            CACHE
            | {
                "policy": {
                    "grants": [
                        {
                            "policy_id": 4,
                            "name": "web",
                            "sources": ["100.64.0.2"],
                            "rules": [["10.1.0.0/24", "tcp", 443, 443]],
                        }
                    ],
                    "valid_until": None,
                }
            }
        )
    )
    cached = SnapshotFollower(offline_identity(tmp_path), GatewaySnapshot, lambda snap: None).load_cached()
    assert cached is not None and (cached.schema_version, cached.revision) == ("1.0", 12)
    assert cached.policy.grants[0].services == ("10.1.0.0-10.1.0.255 . tcp . 443",)


def test_a_cached_snapshot_of_another_major_version_is_ignored_and_the_log_says_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "snapshot.json").write_text(json.dumps(CACHE | {"schema_version": "2.0"}))
    caplog.set_level(logging.WARNING, logger="zerogate.agent.follower")
    assert (
        SnapshotFollower(offline_identity(tmp_path), GatewaySnapshot, lambda snap: None).load_cached() is None
    )
    assert (
        "this gateway understands snapshot schema 1.x; the controller sent 2.0: upgrade zerogate on this host"
        in caplog.text
    )
