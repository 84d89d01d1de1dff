"""The controller under attack (SQLite and PostgreSQL): brute force on sign-in,
enrollment and preflight is throttled per source; a stranger cannot lock the
owner out; sign-in time does not tell which usernames exist; every refusal is
audited or counted into a summary record; X-Forwarded-For is believed only from
configured proxies.

Sources other than 127.0.0.1 are other loopback addresses (the whole 127/8 is
local): a client binds its socket to 127.0.0.2, 127.0.0.3 ... and the controller
on 127.0.0.1 sees that address.

The throttle's arithmetic (progressive delays, caps, memory bounds) is unit
tested with a fake clock at the end.
"""

from __future__ import annotations

import json
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dbaccess import run_sql
from zerogate.controller import auth
from zerogate.controller.config import ConfigError, load_settings
from zerogate.controller.throttle import MAX_TRACKED_KEYS, FailureLog, Throttle, ThrottleLimits
from zerogate.netops.controller_api import make_ssl_context
from zerogate.pki.ca import create_csr, generate_private_key
from zerogate.pki.credentials import new_token
from zerogate.pki.totp import totp_code
from zerogate.pki.wireguard import generate_keypair
from zerogate.testbed.localrun import AccountSession, LocalController

WRONG = "wrong password 12345"
# A first delay longer than any test: "throttled now" cannot pass while a test runs.
SLOW = {"ZEROGATE_THROTTLE_DELAY_SECONDS": "600"}


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def client_from(lc: LocalController, source: str = "127.0.0.1") -> httpx.Client:
    """An HTTPS client whose connections come from ``source`` (a loopback address)."""
    transport = httpx.HTTPTransport(verify=make_ssl_context(lc.ca_pem), local_address=source)
    return httpx.Client(base_url=lc.url, transport=transport, trust_env=False, timeout=30)


def post(
    lc: LocalController,
    path: str,
    body: Any,
    source: str = "127.0.0.1",
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    with client_from(lc, source) as c:
        return c.post(path, json=body, headers=headers or {})


def sign_in(
    lc: LocalController,
    username: str,
    password: str,
    code: str = "000000",
    source: str = "127.0.0.1",
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    return post(
        lc, "/v1/auth/login", {"username": username, "password": password, "totp": code}, source, headers
    )


def wait_seconds(r: httpx.Response) -> int:
    """Retry-After of a 429, checked to be a usable answer."""
    assert r.status_code == 429, r.text
    assert "try again in" in r.json()["detail"]
    return int(r.headers["Retry-After"])


def denied(admin: AccountSession, action: str) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = admin.client.get("/v1/audit", {"action": action, "limit": 1000})
    return [r for r in records if r["outcome"] == "denied"]


def counted(records: list[dict[str, Any]]) -> int:
    """Refusals these records stand for: one each, or the count of a summary."""
    return sum(int(r["details"].get("refusals", 0)) or 1 for r in records)


def bogus_enroll(name: str) -> dict[str, str]:
    return {
        "key": new_token("zgk"),
        "name": name,
        "csr": create_csr(generate_private_key(), name).decode(),
        "wg_public_key": generate_keypair()[1],
    }


def new_key(admin: AccountSession) -> str:
    group = f"grp-{uuid.uuid4().hex[:6]}"
    admin.client.post("/v1/connector-groups", {"name": group, "subnets": ["10.77.0.0/24"]})
    key: str = admin.client.post(f"/v1/connector-groups/{group}/provisioning-keys", {})["key"]
    return key


# ---------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------


@pytest.fixture
def deploy(database_url: str, tmp_path: Path) -> Iterator[Callable[[dict[str, str]], LocalController]]:
    """deploy(env) -> a started, not yet bootstrapped controller with these settings."""
    made: list[LocalController] = []

    def make(env: dict[str, str]) -> LocalController:
        database = "" if database_url.startswith("sqlite") else database_url
        lc = LocalController(tmp_path / f"data{len(made)}", database=database, extra_env=env)
        assert not (made and database), "one PostgreSQL deployment per test: they would share a database"
        made.append(lc)
        return lc.init().start()

    try:
        yield make
    finally:
        for lc in made:
            lc.stop()


# ---------------------------------------------------------------------------
# sign-in: the attacker is slowed down, the owner is not
# ---------------------------------------------------------------------------


def test_a_stranger_cannot_lock_the_owner_out(deploy: Callable[[dict[str, str]], LocalController]) -> None:
    lc = deploy(
        SLOW
        | {
            "ZEROGATE_LOGIN_FAILURES_PER_ACCOUNT": "3",
            "ZEROGATE_LOGIN_FAILURES_PER_ACCOUNT_ANY_SOURCE": "6",
            "ZEROGATE_LOGIN_ACCOUNT_DELAY_MAX_SECONDS": "20",
        }
    )
    admin = lc.bootstrap_admin()  # signed in from 127.0.0.1: a known source for this account
    secret = admin.authenticator.secret

    # Strangers at two addresses guess the admin's password.
    for stranger in ("127.0.0.2", "127.0.0.3"):
        for _ in range(3):
            assert sign_in(lc, admin.username, WRONG, source=stranger).status_code == 401
        # Each is now held off this account, even with the right password ...
        r = sign_in(lc, admin.username, admin.password, totp_code(secret, time.time()), stranger)
        assert wait_seconds(r) >= 600
    # ... and the account, attacked from many addresses, only slows down new
    # addresses: a short, capped wait, never a block.
    r = sign_in(lc, admin.username, admin.password, totp_code(secret, time.time()), "127.0.0.4")
    assert 1 <= wait_seconds(r) <= 20

    # The owner, from the address they signed in from before, still gets in.
    r = sign_in(lc, admin.username, admin.password, admin.authenticator.code())
    assert r.status_code == 200, r.text
    assert r.json()["username"] == admin.username


def test_guessing_from_one_address_is_slowed_down_progressively(
    deploy: Callable[[dict[str, str]], LocalController],
) -> None:
    lc = deploy({"ZEROGATE_LOGIN_FAILURES_PER_SOURCE": "3", "ZEROGATE_THROTTLE_DELAY_SECONDS": "1"})
    admin = lc.bootstrap_admin()
    spray = "127.0.0.2"
    # Spraying guesses over account names: 3 failures, then waits of 1 s, 2 s, ...
    for i in range(3):
        assert sign_in(lc, f"guess{i}", WRONG, source=spray).status_code == 401
    waits = []
    for i in range(2):
        first = sign_in(lc, f"more{i}", WRONG, source=spray)
        waits.append(wait_seconds(first))
        deadline = time.monotonic() + 10
        while (r := sign_in(lc, f"more{i}", WRONG, source=spray)).status_code == 429:
            assert time.monotonic() < deadline, "the throttle never let the source try again"
            time.sleep(0.2)
        assert r.status_code == 401  # one more guess allowed, and it counts
    assert waits == [1, 2]
    # The whole time, other addresses were not affected.
    assert sign_in(lc, admin.username, WRONG, source="127.0.0.3").status_code == 401
    # Refused attempts (429) were not checked, so they did not make the wait longer.
    assert wait_seconds(sign_in(lc, "again", WRONG, source=spray)) <= 4


# ---------------------------------------------------------------------------
# enrollment and preflight
# ---------------------------------------------------------------------------


def test_guessing_provisioning_keys_is_throttled_per_source(
    deploy: Callable[[dict[str, str]], LocalController],
) -> None:
    lc = deploy(SLOW | {"ZEROGATE_KEY_FAILURES_PER_SOURCE": "3"})
    admin = lc.bootstrap_admin()
    guesser = "127.0.0.2"
    assert post(lc, "/v1/enroll/preflight", {"key": new_token("zgk")}, guesser).status_code == 401
    assert post(lc, "/v1/enroll", bogus_enroll("c1"), guesser).status_code == 401
    assert post(lc, "/v1/enroll/preflight", {"key": new_token("zgk")}, guesser).status_code == 401
    # Preflight and enrollment share the count: the guesser waits for either.
    assert wait_seconds(post(lc, "/v1/enroll/preflight", {"key": new_token("zgk")}, guesser)) >= 600
    assert wait_seconds(post(lc, "/v1/enroll", bogus_enroll("c2"), guesser)) >= 600
    # A host at another address enrolls with its real key.
    key = new_key(admin)
    assert post(lc, "/v1/enroll/preflight", {"key": key}, "127.0.0.3").status_code == 200
    body = bogus_enroll("c3") | {"key": key}
    r = post(lc, "/v1/enroll", body, "127.0.0.3")
    assert r.status_code == 200, r.text
    # Every refusal above is in the audit log (a record per refusal in this deployment).
    assert [d["details"]["error"] for d in denied(admin, "enroll-preflight")][-1] == "rate limited"
    assert len(denied(admin, "enroll-preflight")) == 3
    assert [d["source"] for d in denied(admin, "enroll")] == [guesser] * 2


# ---------------------------------------------------------------------------
# refusals are audited, but aggregated
# ---------------------------------------------------------------------------


def test_repeated_refusals_become_one_summary_record(
    deploy: Callable[[dict[str, str]], LocalController],
) -> None:
    lc = deploy(
        {
            "ZEROGATE_AUDIT_REFUSAL_WINDOW_SECONDS": "5",
            "ZEROGATE_KEY_FAILURES_PER_SOURCE": "5",
            "ZEROGATE_THROTTLE_DELAY_SECONDS": "600",
        }
    )
    admin = lc.bootstrap_admin()
    guesser = "127.0.0.2"
    bodies = [bogus_enroll(f"c{i}") for i in range(8)]  # made first: all 8 inside one window
    statuses = [post(lc, "/v1/enroll", body, guesser).status_code for body in bodies]
    assert statuses == [401] * 5 + [429] * 3
    # At once: only the first refusal is a record.
    first = denied(admin, "enroll")
    assert len(first) == 1 and first[0]["source"] == guesser
    # When the window ends, one summary accounts for the other seven.
    deadline = time.monotonic() + 20
    while len(records := denied(admin, "enroll")) < 2:
        assert time.monotonic() < deadline, "no summary record after the window ended"
        time.sleep(0.2)
    summary = records[1]
    assert summary["source"] == guesser
    assert summary["details"]["refusals"] == 7
    assert summary["details"]["errors"] == {
        "provisioning key not recognised: copy the whole install string again": 4,
        "rate limited": 3,
    }
    assert summary["details"]["error"].startswith(f"7 further refusals from {guesser} in the last ")
    assert counted(records) == len(statuses)


def test_pending_refusal_counts_are_written_at_shutdown(
    deploy: Callable[[dict[str, str]], LocalController],
) -> None:
    lc = deploy({"ZEROGATE_AUDIT_REFUSAL_WINDOW_SECONDS": "3600"})
    admin = lc.bootstrap_admin()
    sent = 0
    for source in ("127.0.0.2", "127.0.0.3"):
        for _ in range(3):
            assert sign_in(lc, "nobody", WRONG, source=source).status_code == 401
            sent += 1
    assert len(denied(admin, "login")) == 2  # the first from each source
    lc.stop()
    rows = run_sql(lc, "SELECT source, details FROM audit_log WHERE action = 'login' AND outcome = 'denied'")
    details = [(source, json.loads(text)) for source, text in rows]
    summaries = [(source, d) for source, d in details if "refusals" in d]
    assert sorted(source for source, _ in summaries) == ["127.0.0.2", "127.0.0.3"]
    assert [d["refusals"] for _, d in summaries] == [2, 2]
    assert len(details) - len(summaries) + 4 == sent


# ---------------------------------------------------------------------------
# forwarded headers
# ---------------------------------------------------------------------------


def test_forged_forwarded_for_changes_neither_audit_nor_throttle(
    deploy: Callable[[dict[str, str]], LocalController],
) -> None:
    lc = deploy(SLOW | {"ZEROGATE_LOGIN_FAILURES_PER_SOURCE": "2"})
    admin = lc.bootstrap_admin()
    for forged in ("203.0.113.1", "203.0.113.2"):
        r = sign_in(lc, "nobody", WRONG, headers={"X-Forwarded-For": forged})
        assert r.status_code == 401
    # A third "address" is still the same caller.
    wait_seconds(sign_in(lc, "nobody", WRONG, headers={"X-Forwarded-For": "203.0.113.3"}))
    assert {d["source"] for d in denied(admin, "login")} == {"127.0.0.1"}


def test_forwarded_for_is_believed_from_a_trusted_proxy(
    deploy: Callable[[dict[str, str]], LocalController],
) -> None:
    lc = deploy(SLOW | {"ZEROGATE_LOGIN_FAILURES_PER_SOURCE": "2", "ZEROGATE_TRUSTED_PROXIES": "127.0.0.1"})
    admin = lc.bootstrap_admin()
    behind = {"X-Forwarded-For": "203.0.113.1"}
    for _ in range(2):
        assert sign_in(lc, "nobody", WRONG, headers=behind).status_code == 401
    wait_seconds(sign_in(lc, "nobody", WRONG, headers=behind))
    # Another client behind the same proxy has its own count.
    assert sign_in(lc, "nobody", WRONG, headers={"X-Forwarded-For": "203.0.113.2"}).status_code == 401
    # A caller that is not the proxy cannot claim an address.
    assert sign_in(lc, "nobody", WRONG, source="127.0.0.2", headers=behind).status_code == 401
    sources = [d["source"] for d in denied(admin, "login")]
    assert sources == ["203.0.113.1", "203.0.113.1", "203.0.113.1", "203.0.113.2", "127.0.0.2"]


def test_trusted_proxies_must_be_addresses_and_not_everyone(tmp_path: Path) -> None:
    ok = load_settings(tmp_path, environ={"ZEROGATE_TRUSTED_PROXIES": "10.0.0.5, 192.0.2.0/24"})
    assert ok.trusted_proxies == ["10.0.0.5/32", "192.0.2.0/24"]
    assert load_settings(tmp_path, environ={}).trusted_proxies == []
    for bad, says in (("*", "IP addresses or networks"), ("0.0.0.0/0", "every address"), ("::/0", "every")):
        with pytest.raises(ConfigError, match=says):
            load_settings(tmp_path, environ={"ZEROGATE_TRUSTED_PROXIES": bad})


# ---------------------------------------------------------------------------
# timing does not tell which usernames exist
# ---------------------------------------------------------------------------


def test_sign_in_takes_as_long_for_unknown_usernames(
    deploy: Callable[[dict[str, str]], LocalController],
) -> None:
    lc = deploy({"ZEROGATE_LOGIN_FAILURES_PER_SOURCE": "1000", "ZEROGATE_LOGIN_FAILURES_PER_ACCOUNT": "1000"})
    admin = lc.bootstrap_admin()
    times: dict[str, list[float]] = {admin.username: [], "nobody-here": []}
    with client_from(lc) as c:  # one connection: no TLS handshakes in the numbers
        for _ in range(15):
            for name, samples in times.items():  # interleaved, so drift hits both alike
                started = time.perf_counter()
                r = c.post("/v1/auth/login", json={"username": name, "password": WRONG, "totp": "000000"})
                samples.append(time.perf_counter() - started)
                assert r.status_code == 401
    known, unknown = (statistics.median(s) for s in times.values())
    # Without the dummy hash: ~6 ms against ~130 ms, a factor of 20.
    assert max(known, unknown) / min(known, unknown) < 2.5, (known, unknown)


def test_a_missing_password_hash_is_still_verified_against_a_dummy(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def verify(stored: str, password: str) -> bool:
        calls.append(stored)
        return True  # even a match with the dummy must not let anyone in

    monkeypatch.setattr(auth, "verify_password", verify)
    assert auth.password_matches(None, "anything 12345") is False
    assert auth.password_matches("", "anything 12345") is False
    assert calls == [auth.dummy_password_hash()] * 2
    assert calls[0].startswith("$argon2id$")
    assert auth.password_matches("$argon2id$stored", "anything 12345") is True
    assert calls[-1] == "$argon2id$stored"


# ---------------------------------------------------------------------------
# the throttle itself (fake clock)
# ---------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_throttle_delays_double_and_expire_with_the_window() -> None:
    clock = Clock()
    t = Throttle(ThrottleLimits(per_source=100, per_account=2, window=60, delay_unit=1), clock)
    for _ in range(2):
        assert t.login_wait("alice", "s1") == 0
        t.login_failed("alice", "s1")
    assert t.login_wait("alice", "s1") == 1
    clock.now += 1
    t.login_failed("alice", "s1")
    assert t.login_wait("alice", "s1") == 2
    clock.now += 2
    t.login_failed("alice", "s1")
    assert t.login_wait("alice", "s1") == 4
    assert t.login_wait("alice", "s2") == 0  # another address
    assert t.login_wait("bob", "s1") == 0  # another account
    clock.now += 61
    assert t.login_wait("alice", "s1") == 0  # the failures are out of the window


def test_account_wide_limit_spares_known_sources_and_is_capped() -> None:
    clock = Clock()
    limits = ThrottleLimits(
        per_source=100, per_account=100, per_account_any_source=3, delay_unit=10, account_delay_cap=30
    )
    t = Throttle(limits, clock)
    t.login_succeeded("alice", "home")
    for i in range(10):
        t.login_failed("alice", f"bot{i}")
    assert t.login_wait("alice", "home") == 0
    assert 0 < t.login_wait("alice", "cafe") <= 30
    # The owner's own typos at home do not slow strangers' ... nor the owner.
    t.login_failed("alice", "home")
    assert t.login_wait("alice", "home") == 0


def test_success_clears_only_that_address_and_account() -> None:
    clock = Clock()
    t = Throttle(ThrottleLimits(per_source=3, per_account=2, delay_unit=5), clock)
    t.login_failed("alice", "s1")
    t.login_failed("alice", "s1")
    t.login_failed("bob", "s1")
    assert t.login_wait("alice", "s1") == 5
    t.login_succeeded("alice", "s1")
    # The pair is forgiven, but the source keeps its count: one valid account
    # does not reset an address that sprays guesses at others.
    assert t.login_wait("alice", "s1") == 5
    assert t.login_wait("carol", "s1") == 5


def test_failure_log_memory_is_bounded() -> None:
    clock = Clock()
    log = FailureLog(window=60, clock=clock)
    for i in range(MAX_TRACKED_KEYS + 500):
        log.add(("source", f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}"), clock.now)
    assert len(log) <= MAX_TRACKED_KEYS
    clock.now += 61
    log.add(("source", "fresh"), clock.now)
    assert len(log) == 1
