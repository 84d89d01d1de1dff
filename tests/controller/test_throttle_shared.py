"""The sign-in throttle is shared through the database (issue 15): failures
spread over two controllers of one deployment (one real PostgreSQL) throttle
the account and the source on both, the owner's known source is exempt on
both, and a restarted controller still throttles (SQLite and PostgreSQL).

Each controller alone would let an attacker through: the tests spread the
failures so that neither controller reaches a limit with its own, then count
how many further attempts pass before the 429. Those attempts count too, so
the bound asserted is below what one controller alone would need -- a
throttle that is not shared fails the test.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dbaccess import run_sql
from pgserver import PostgresServer
from zerogate.controller.throttle import FailureLog, Throttle, ThrottleLimits
from zerogate.netops.controller_api import make_ssl_context
from zerogate.testbed.localrun import AccountSession, LocalController

WRONG = "zth wrong password 7391"
ENV = {
    "ZEROGATE_LOGIN_FAILURES_PER_ACCOUNT": "6",  # one account from one source
    "ZEROGATE_LOGIN_FAILURES_PER_SOURCE": "100",
    "ZEROGATE_LOGIN_FAILURES_PER_ACCOUNT_ANY_SOURCE": "10",
    # A first delay longer than any test: "throttled now" cannot pass while a test runs.
    "ZEROGATE_THROTTLE_DELAY_SECONDS": "600",
    "ZEROGATE_LOGIN_ACCOUNT_DELAY_MAX_SECONDS": "600",
}


def sign_in(
    lc: LocalController, username: str, source: str, password: str = WRONG, code: str = "000000"
) -> int:
    """One sign-in from ``source`` (a loopback address); its HTTP status."""
    transport = httpx.HTTPTransport(verify=make_ssl_context(lc.ca_pem), local_address=source)
    with httpx.Client(base_url=lc.url, transport=transport, trust_env=False, timeout=30) as c:
        r = c.post("/v1/auth/login", json={"username": username, "password": password, "totp": code})
    assert r.status_code in (200, 401, 429), r.text
    if r.status_code == 429:
        assert int(r.headers["Retry-After"]) >= 1
    return r.status_code


def passed_before_429(lc: LocalController, username: str, sources: list[str], most: int) -> int:
    """Wrong guesses (each from the next source) that get a 401 before the
    first 429; fails if ``most`` of them pass."""
    for passed, source in enumerate(sources[: most + 1]):
        if sign_in(lc, username, source) == 429:
            return passed
    raise AssertionError(f"{most + 1} further guesses passed: the failures were not shared")


class Pair:
    def __init__(self, first: LocalController, second: LocalController, admin: AccountSession) -> None:
        self.first, self.second, self.admin = first, second, admin


@pytest.fixture(scope="module")
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    """Two controller processes of one deployment (same data directory, same PostgreSQL)."""
    server: PostgresServer = request.getfixturevalue("postgres_server")
    base = tmp_path_factory.mktemp("zth")
    database = server.create_database(f"zth_{uuid.uuid4().hex[:12]}")
    first = LocalController(base / "data", database=database, extra_env=ENV).init()
    second = LocalController(
        first.data_dir, database=database, log_path=base / "second.log", ca_pin=first.ca_pin, extra_env=ENV
    )
    try:
        first.start()
        second.start()
        yield Pair(first, second, first.bootstrap_admin())
    finally:
        second.stop()
        first.stop()


@pytest.mark.postgres
def test_guesses_at_one_account_from_many_sources_over_two_controllers_slow_both(pair: Pair) -> None:
    # The owner signs in through the first controller: 127.0.0.1 becomes a known source.
    owner = pair.first.create_user(pair.admin, "zth-owner", [])
    # 10 unknown sources, one guess each, alternating: 5 per controller, limit 10.
    for i in range(10):
        lc = pair.first if i % 2 else pair.second
        assert sign_in(lc, "zth-owner", f"127.0.0.{10 + i}") == 401
    # One controller alone needs 5 more; shared, the next is refused (a
    # guess or two may pass while the last rows travel, ~0.25 s).
    probes = [f"127.0.0.{30 + i}" for i in range(10)]
    on_second = passed_before_429(pair.second, "zth-owner", probes[:5], most=4)
    on_first = passed_before_429(pair.first, "zth-owner", probes[5:], most=4)
    print(f"\nguesses passed after the shared limit: second {on_second}, first {on_first}")
    # Never the owner: its known source (learnt by the first controller) gets
    # in through the second with the right password and code.
    code = owner.authenticator.code()
    assert sign_in(pair.second, "zth-owner", "127.0.0.1", owner.password, code) == 200


@pytest.mark.postgres
def test_guesses_from_one_source_over_two_controllers_slow_that_pair_on_both(pair: Pair) -> None:
    source = "127.0.0.5"
    for i in range(6):  # limit 6 for one account from one source: 3 per controller
        assert sign_in(pair.first if i % 2 else pair.second, "zth-pair", source) == 401
    on_second = passed_before_429(pair.second, "zth-pair", [source] * 3, most=2)
    on_first = passed_before_429(pair.first, "zth-pair", [source] * 3, most=2)
    print(f"\nguesses passed after the shared limit: second {on_second}, first {on_first}")
    # Another source is not affected.
    assert sign_in(pair.first, "zth-pair", "127.0.0.6") == 401


@pytest.mark.postgres
def test_a_restarted_controller_keeps_the_shared_counts(pair: Pair) -> None:
    source = "127.0.0.7"
    for _ in range(6):  # all on the first controller
        assert sign_in(pair.first, "zth-restart", source) == 401
    pair.second.stop()  # only the database keeps the counts now
    pair.first.stop()
    pair.first.start()
    pair.second.start()
    assert sign_in(pair.first, "zth-restart", source) == 429  # loaded before serving
    assert sign_in(pair.second, "zth-restart", source) == 429


@pytest.fixture
def sqlite_controller(tmp_path: Path) -> Iterator[LocalController]:
    lc = LocalController(tmp_path / "data", extra_env=ENV).init()
    try:
        lc.start()
        yield lc
    finally:
        lc.stop()


def test_sqlite_restart_keeps_the_counts_and_stores_no_secret(sqlite_controller: LocalController) -> None:
    lc, source = sqlite_controller, "127.0.0.8"
    for _ in range(6):
        assert sign_in(lc, "zth-sqlite", source) == 401
    assert sign_in(lc, "zth-sqlite", source) == 429
    lc.stop()
    lc.start()
    assert sign_in(lc, "zth-sqlite", source) == 429
    rows = run_sql(lc, "SELECT kind, source, account, account_wide, origin FROM throttle_failures")
    assert [r[:3] for r in rows] == [("login", source, "zth-sqlite")] * 6
    # The guessed password is nowhere in the database's throttle tables.
    everything = run_sql(lc, "SELECT * FROM throttle_failures") + run_sql(
        lc, "SELECT * FROM throttle_known_sources"
    )
    assert not any(WRONG in value for row in everything for value in row)


def test_replayed_failures_keep_time_order_and_a_success_forgets_only_older_ones() -> None:
    # Another controller's failure may be older than the newest one here.
    log = FailureLog(60, lambda: 100.0)
    for at in (100.0, 90.0, 95.0, 30.0):  # 30 is outside the window: not counted
        log.add("k", 100.0, at)
    assert list(log.recent("k", 100.0)) == [90.0, 95.0, 100.0]
    # A sign-in at 95 (learnt from the database) forgets failures up to then only.
    log.forget("k", until=95.0)
    assert list(log.recent("k", 100.0)) == [100.0]
    # The delay counts from the newest failure, wherever it came from.
    t = Throttle(ThrottleLimits(per_account=2, per_source=100, delay_unit=10), clock=lambda: 100.0)
    t._count_login("a", "s", True, 100.0, 99.0)
    t._count_login("a", "s", True, 100.0, 80.0)
    assert t.login_wait("a", "s") == pytest.approx(99.0 + 10.0 - 100.0)
