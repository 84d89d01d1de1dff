"""Sign-in end to end against a real controller (SQLite and PostgreSQL).

Bootstrap with the one-time code, password + TOTP login, sessions, named API
tokens, token expiry and revocation, login throttling, disabling accounts, and
what the controller keeps (hashes only) and logs (no secrets).
"""

from __future__ import annotations

import hashlib
import re
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dbaccess import run_sql
from zerogate.netops.controller_api import ApiError, make_ssl_context
from zerogate.pki.ca import create_csr, generate_private_key
from zerogate.pki.totp import time_step, totp_code
from zerogate.pki.wireguard import generate_keypair
from zerogate.testbed.localrun import AccountSession, Authenticator, LocalController

USER_PASSWORD = "user password 12345"


# Signed-in sessions keep a keep-alive connection open, which holds the
# controller's graceful shutdown for 5 s; close them before it is stopped.


# ---------------------------------------------------------------------------
# helpers: direct database access (only to simulate time passing / inspect storage)
# ---------------------------------------------------------------------------


def sql_past(controller: LocalController) -> str:
    """An SQL expression for a moment well in the past, as the engine stores times."""
    return "now() - interval '1 hour'" if controller.database else "'2000-01-01 00:00:00.000000'"


def table_text(controller: LocalController, table: str) -> str:
    """Every value of every row of ``table`` as one string (for 'is this secret stored?')."""
    if controller.database:
        return "\n".join(r[0] for r in run_sql(controller, f"SELECT t::text FROM {table} t"))
    return "\n".join("|".join(row) for row in run_sql(controller, f"SELECT * FROM {table}"))


# ---------------------------------------------------------------------------
# helpers: HTTP
# ---------------------------------------------------------------------------


def raw(
    controller: LocalController, method: str, path: str, body: Any = None, token: str | None = None
) -> httpx.Response:
    """One request with full access to the response (status and headers)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(
        base_url=controller.url, verify=make_ssl_context(controller.ca_pem), trust_env=False, timeout=30
    ) as h:
        return h.request(method, path, json=body, headers=headers)


def login(controller: LocalController, username: str, password: str, code: str) -> httpx.Response:
    return raw(
        controller, "POST", "/v1/auth/login", {"username": username, "password": password, "totp": code}
    )


def invalid_code(secret: str) -> str:
    """A well-formed 6-digit code that is valid for none of the accepted time steps."""
    now = time_step(time.time())
    valid = {totp_code(secret, s * 30 + 1) for s in range(now - 2, now + 3)}
    return next(c for c in ("000000", "111111", "222222", "333333") if c not in valid)


def current_code(secret: str) -> str:
    return totp_code(secret, time.time())


def whoami_status(controller: LocalController, token: str) -> tuple[int, str]:
    r = raw(controller, "GET", "/v1/auth/whoami", token=token)
    return r.status_code, r.text


def new_user_pending(
    controller: LocalController, admin: AccountSession, name: str
) -> tuple[str, Authenticator]:
    """Create + activate a user, TOTP not yet confirmed; returns (username, authenticator)."""
    created = admin.client.post("/v1/users", {"username": name})
    with controller.client() as c:
        enrollment = c.post(
            "/v1/auth/activate",
            {"username": name, "activation_code": created["activation_code"], "password": USER_PASSWORD},
        )
    return name, Authenticator(enrollment["totp_secret"])


def confirm(controller: LocalController, name: str, auth: Authenticator) -> None:
    with controller.client() as c:
        c.post("/v1/auth/totp/confirm", {"username": name, "password": USER_PASSWORD, "totp": auth.code()})


def register_client(session: AccountSession, name: str) -> dict[str, Any]:
    _, wg_public = generate_keypair()
    result: dict[str, Any] = session.client.post(
        "/v1/clients",
        {"name": name, "csr": create_csr(generate_private_key(), name).decode(), "wg_public_key": wg_public},
    )
    return result


# ---------------------------------------------------------------------------
# fixtures: fresh deployments (same engine as the module's controller)
# ---------------------------------------------------------------------------


@pytest.fixture
def fresh_controller(
    controller: LocalController, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., LocalController]]:
    """make(extra_env) -> a new, started, not yet bootstrapped deployment; stopped afterwards."""
    made: list[LocalController] = []

    def make(extra_env: dict[str, str] | None = None) -> LocalController:
        database = ""
        if controller.database:
            server = request.getfixturevalue("postgres_server")
            database = server.create_database(f"zgauth_{uuid.uuid4().hex[:12]}")
        lc = LocalController(
            tmp_path / f"deployment{len(made)}", database=database, extra_env=extra_env or {}
        )
        made.append(lc)
        lc.init().start()
        return lc

    try:
        yield make
    finally:
        for lc in made:
            lc.stop()


# ---------------------------------------------------------------------------
# bootstrap
# ---------------------------------------------------------------------------


def test_bootstrap_code_is_checked_single_use_and_needs_a_strong_password(
    fresh_controller: Callable[..., LocalController],
) -> None:
    lc = fresh_controller()
    password = "first admin passphrase 42"

    r = raw(
        lc,
        "POST",
        "/v1/auth/bootstrap",
        {"code": "ABCD-EFGH-JKLM-NPQR-STUV", "username": "root", "password": password},
    )
    assert r.status_code == 401, r.text
    assert "wrong bootstrap code" in r.json()["detail"]

    r = raw(
        lc,
        "POST",
        "/v1/auth/bootstrap",
        {"code": lc.bootstrap_code, "username": "root", "password": "short1"},
    )
    assert r.status_code == 422, r.text
    assert "password" in r.json()["detail"]

    # Neither failure used the code up; typed without dashes and in lower case it still works.
    typed = lc.bootstrap_code.replace("-", "").lower()
    r = raw(lc, "POST", "/v1/auth/bootstrap", {"code": typed, "username": "root", "password": password})
    assert r.status_code == 200, r.text
    enrollment = r.json()
    assert enrollment["username"] == "root" and enrollment["otpauth_uri"].startswith("otpauth://totp/")
    auth = Authenticator(enrollment["totp_secret"])

    r = raw(
        lc,
        "POST",
        "/v1/auth/bootstrap",
        {"code": lc.bootstrap_code, "username": "root2", "password": password},
    )
    assert r.status_code == 403, r.text
    assert "already used" in r.json()["detail"]

    # The new admin cannot sign in before confirming TOTP ...
    r = login(lc, "root", password, current_code(auth.secret))
    assert r.status_code == 403, r.text
    assert "confirm TOTP" in r.json()["detail"]
    # ... and can afterwards.
    with lc.client() as c:
        assert c.post(
            "/v1/auth/totp/confirm", {"username": "root", "password": password, "totp": auth.code()}
        ) == {"status": "active", "kind": "admin"}
    r = login(lc, "root", password, auth.code())
    assert r.status_code == 200, r.text
    assert r.json()["kind"] == "admin"
    status, body = whoami_status(lc, r.json()["token"])
    assert status == 200 and '"name":"root"' in body


# ---------------------------------------------------------------------------
# login: password + TOTP
# ---------------------------------------------------------------------------


def test_account_cannot_sign_in_before_totp_is_confirmed(
    controller: LocalController, admin: AccountSession, unique: Callable[[str], str]
) -> None:
    name, auth = new_user_pending(controller, admin, unique("pending"))
    r = login(controller, name, USER_PASSWORD, current_code(auth.secret))
    assert r.status_code == 403, r.text
    assert "pending" in r.json()["detail"]

    # A wrong code does not activate the account.
    r = raw(
        controller,
        "POST",
        "/v1/auth/totp/confirm",
        {"username": name, "password": USER_PASSWORD, "totp": invalid_code(auth.secret)},
    )
    assert r.status_code == 401, r.text
    assert admin.client.get(f"/v1/users/{name}")["status"] == "pending"

    confirm(controller, name, auth)
    assert admin.client.get(f"/v1/users/{name}")["status"] == "active"
    r = login(controller, name, USER_PASSWORD, auth.code())
    assert r.status_code == 200, r.text


def test_activation_code_is_single_use(
    controller: LocalController, admin: AccountSession, unique: Callable[[str], str]
) -> None:
    name = unique("mallory")
    created = admin.client.post("/v1/users", {"username": name})
    body = {"username": name, "activation_code": created["activation_code"], "password": USER_PASSWORD}
    first = raw(controller, "POST", "/v1/auth/activate", body)
    assert first.status_code == 200, first.text
    # Whoever finds the code later cannot reset the password and TOTP secret with it.
    again = raw(controller, "POST", "/v1/auth/activate", body | {"password": "attacker password 99"})
    assert again.status_code == 401, again.text
    auth = Authenticator(first.json()["totp_secret"])
    confirm(controller, name, auth)
    assert login(controller, name, USER_PASSWORD, auth.code()).status_code == 200


def test_login_needs_password_and_a_fresh_totp_code(
    controller: LocalController, admin: AccountSession, unique: Callable[[str], str]
) -> None:
    name, auth = new_user_pending(controller, admin, unique("alice"))
    confirm(controller, name, auth)

    r = login(controller, name, "not the password 999", current_code(auth.secret))
    assert r.status_code == 401, r.text
    r = login(controller, name, USER_PASSWORD, invalid_code(auth.secret))
    assert r.status_code == 401, r.text
    r = login(controller, "nobody-" + name, USER_PASSWORD, current_code(auth.secret))
    assert r.status_code == 401, r.text

    code = auth.code()
    r = login(controller, name, USER_PASSWORD, code)
    assert r.status_code == 200, r.text
    session = r.json()
    assert session["kind"] == "user" and session["username"] == name
    assert session["token"].startswith("zgt_")

    # The same code a second time is refused, even with the right password.
    r = login(controller, name, USER_PASSWORD, code)
    assert r.status_code == 401, r.text

    status, body = whoami_status(controller, session["token"])
    assert status == 200, body
    assert '"kind":"user"' in body and '"mfa":true' in body


def test_logout_revokes_the_session_token(
    controller: LocalController, admin: AccountSession, unique: Callable[[str], str]
) -> None:
    user = controller.create_user(admin, unique("bob"), [])
    assert whoami_status(controller, user.token)[0] == 200
    assert raw(controller, "POST", "/v1/auth/logout", token=user.token).status_code == 204
    status, body = whoami_status(controller, user.token)
    assert status == 401, body
    assert "revoked" in body
    # Every endpoint refuses it, not only whoami.
    assert raw(controller, "GET", "/v1/tokens", token=user.token).status_code == 401


def test_expired_session_token_is_refused(
    controller: LocalController, admin: AccountSession, unique: Callable[[str], str]
) -> None:
    user = controller.create_user(admin, unique("carol"), [])
    token_id = next(t["id"] for t in admin.client.get("/v1/tokens") if t["username"] == user.username)
    assert whoami_status(controller, user.token)[0] == 200
    # Simulate the session lifetime passing.
    run_sql(controller, f"UPDATE api_tokens SET expires_at = {sql_past(controller)} WHERE id = {token_id}")
    status, body = whoami_status(controller, user.token)
    assert status == 401, body
    assert "expired" in body


def test_garbage_and_unknown_tokens_are_refused(controller: LocalController) -> None:
    assert whoami_status(controller, "zgt_" + "A" * 43)[0] == 401
    with httpx.Client(
        base_url=controller.url, verify=make_ssl_context(controller.ca_pem), trust_env=False, timeout=30
    ) as h:
        r = h.get("/v1/tokens", headers={"Authorization": "Basic YWRtaW46YWRtaW4="})
    assert r.status_code == 401
    assert raw(controller, "GET", "/v1/tokens").status_code == 401


# ---------------------------------------------------------------------------
# named API tokens
# ---------------------------------------------------------------------------


def test_api_token_shown_once_stored_hashed_and_revocable(
    controller: LocalController, admin: AccountSession, unique: Callable[[str], str]
) -> None:
    name = unique("ci")
    created = admin.client.post("/v1/tokens", {"name": name, "ttl_days": 7})
    token = created["token"]
    assert re.fullmatch(r"zgt_[A-Za-z0-9_-]{43}", token)
    assert created["kind"] == "api" and created["username"] == admin.username
    assert created["hint"] == token[:8]

    # Listed afterwards only by hint: the token itself is never shown again.
    listed = [t for t in admin.client.get("/v1/tokens") if t["id"] == created["id"]]
    assert len(listed) == 1 and "token" not in listed[0]
    assert token not in str(admin.client.get("/v1/tokens"))

    # The database holds a SHA-256 digest, never the token.
    rows = run_sql(controller, f"SELECT digest, hint FROM api_tokens WHERE id = {created['id']}")
    assert rows == [(hashlib.sha256(token.encode()).hexdigest(), token[:8])]
    assert re.fullmatch(r"[0-9a-f]{64}", rows[0][0])
    for table in ("api_tokens", "audit_log"):
        assert token not in table_text(controller, table)
    if not controller.database:
        for path in controller.data_dir.glob("zerogate.db*"):
            assert token.encode() not in path.read_bytes(), path

    # It works as a bearer token (an API token carries no MFA claim) ...
    with controller.client(token) as c:
        assert c.get("/v1/auth/whoami") == {
            "kind": "admin",
            "id": 1,
            "name": admin.username,
            "role": "",
            "mfa": False,
        }
        # ... and is cut off on the very next request once revoked.
        admin.client.delete(f"/v1/tokens/{created['id']}")
        with pytest.raises(ApiError) as exc:
            c.get("/v1/auth/whoami")
    assert exc.value.status == 401 and "revoked" in exc.value.message
    revoked = next(t for t in admin.client.get("/v1/tokens") if t["id"] == created["id"])
    assert revoked["revoked_at"] is not None


def test_only_admins_create_api_tokens_and_lifetime_is_capped(
    controller: LocalController, admin: AccountSession, unique: Callable[[str], str]
) -> None:
    user = controller.create_user(admin, unique("dave"), [])
    with pytest.raises(ApiError) as exc:
        user.client.post("/v1/tokens", {"name": "mine"})
    assert exc.value.status == 403
    with pytest.raises(ApiError) as exc:
        admin.client.post("/v1/tokens", {"name": unique("long"), "ttl_days": 3650})
    assert exc.value.status == 422 and "ttl_days" in exc.value.message


# ---------------------------------------------------------------------------
# throttling
# ---------------------------------------------------------------------------


def _retry_after(r: httpx.Response) -> int:
    assert r.status_code == 429, r.text
    assert "too many" in r.json()["detail"]
    value = int(r.headers["Retry-After"])
    assert 1 <= value <= 901
    return value


# A first delay longer than any test, so "throttled now" cannot pass by while a test runs.
SLOW_THROTTLE = {"ZEROGATE_THROTTLE_DELAY_SECONDS": "600"}


def test_login_throttle_per_account(fresh_controller: Callable[..., LocalController]) -> None:
    # Per account *from one source*: tests/controller/test_abuse.py shows the
    # owner at another address is not affected.
    lc = fresh_controller(
        {"ZEROGATE_LOGIN_FAILURES_PER_ACCOUNT": "3", "ZEROGATE_LOGIN_FAILURES_PER_SOURCE": "100"}
        | SLOW_THROTTLE
    )
    admin = lc.bootstrap_admin()
    victim = lc.create_user(admin, "victim", [])
    # Confirmed but not signed in: its next (single-use) code is for the sign-in below.
    _, bystander = new_user_pending(lc, admin, "bystander")
    confirm(lc, "bystander", bystander)

    for _ in range(3):
        assert (
            login(lc, "victim", "guessed password 1", current_code(victim.authenticator.secret)).status_code
            == 401
        )
    # Now even the right password and code are refused for this account from
    # this address, with a Retry-After.
    r = login(lc, "victim", USER_PASSWORD, current_code(victim.authenticator.secret))
    _retry_after(r)
    # TOTP confirmation is throttled by the same counter.
    r = raw(
        lc,
        "POST",
        "/v1/auth/totp/confirm",
        {"username": "victim", "password": USER_PASSWORD, "totp": "123456"},
    )
    assert r.status_code == 429
    # Other accounts from the same source are not affected.
    r = login(lc, "bystander", USER_PASSWORD, bystander.code())
    assert r.status_code == 200, r.text

    # (A record per refusal: test deployments do not aggregate them, see
    # tests/controller/test_abuse.py for aggregation.)
    denied = [a for a in admin.client.get("/v1/audit", {"action": "login"}) if a["outcome"] == "denied"]
    assert [a["details"]["error"] for a in denied if a["object_id"] == "victim"] == [
        "wrong username or password"
    ] * 3 + ["rate limited"]


def test_login_throttle_per_source(fresh_controller: Callable[..., LocalController]) -> None:
    lc = fresh_controller(
        {"ZEROGATE_LOGIN_FAILURES_PER_ACCOUNT": "100", "ZEROGATE_LOGIN_FAILURES_PER_SOURCE": "4"}
        | SLOW_THROTTLE
    )
    admin = lc.bootstrap_admin()
    # Spraying guesses over many account names from one address ...
    for i in range(4):
        assert login(lc, f"guess{i}", "guessed password 1", "123456").status_code == 401
    # ... locks that address out, for every account, even with valid credentials.
    r = login(lc, admin.username, admin.password, current_code(admin.authenticator.secret))
    _retry_after(r)
    r = login(lc, "guess9", "guessed password 1", "123456")
    assert r.status_code == 429
    # Sessions that already exist keep working.
    assert admin.client.get("/v1/auth/whoami")["name"] == admin.username


# ---------------------------------------------------------------------------
# disabling accounts
# ---------------------------------------------------------------------------


def test_disabling_a_user_cuts_off_tokens_and_devices_at_once(
    controller: LocalController, admin: AccountSession, unique: Callable[[str], str]
) -> None:
    user = controller.create_user(admin, unique("erin"), [])
    device = register_client(user, unique("laptop"))
    with controller.client(device["credential"]) as dev:
        rev_before = int(dev.request("GET", "/v1/snapshot").headers["X-Zerogate-Revision"])
    assert whoami_status(controller, user.token)[0] == 200

    admin.client.patch(f"/v1/users/{user.username}", {"disabled": True})

    status, body = whoami_status(controller, user.token)
    assert status == 401, body
    r = raw(controller, "GET", "/v1/snapshot", token=device["credential"])
    assert r.status_code == 401, r.text
    assert admin.client.get(f"/v1/users/{user.username}")["status"] == "disabled"
    with controller.client() as c:
        assert c.get("/v1/health")["revision"] > rev_before
    # Signing in again is refused too (password and code are right, the account is not).
    r = login(controller, user.username, USER_PASSWORD, current_code(user.authenticator.secret))
    assert r.status_code == 403 and "disabled" in r.json()["detail"]

    # An admin cannot lock themselves out.
    with pytest.raises(ApiError) as exc:
        admin.client.patch(f"/v1/admins/{admin.username}", {"disabled": True})
    assert exc.value.status == 422


# ---------------------------------------------------------------------------
# what is stored and what is logged
# ---------------------------------------------------------------------------


def test_passwords_are_stored_as_argon2id(
    controller: LocalController, admin: AccountSession, unique: Callable[[str], str]
) -> None:
    user = controller.create_user(admin, unique("frank"), [])
    rows = dict(
        run_sql(controller, "SELECT username, password_hash FROM accounts WHERE password_hash IS NOT NULL")
    )
    assert {admin.username, user.username} <= set(rows)
    for hashed in rows.values():
        assert hashed.startswith("$argon2id$"), hashed
    assert admin.password not in str(rows) and USER_PASSWORD not in str(rows)
    accounts = table_text(controller, "accounts")
    assert admin.password not in accounts and USER_PASSWORD not in accounts
    assert controller.bootstrap_code not in accounts + table_text(controller, "deployment_state")


def test_secrets_never_reach_the_controller_log(
    controller: LocalController, admin: AccountSession, unique: Callable[[str], str]
) -> None:
    user = controller.create_user(admin, unique("gina"), [])
    # A failed sign-in and an API token, so their secrets pass through the controller too.
    assert (
        login(
            controller, user.username, "wrong password 777", current_code(user.authenticator.secret)
        ).status_code
        == 401
    )
    api = admin.client.post("/v1/tokens", {"name": unique("log")})
    with controller.client(api["token"]) as c:
        c.get("/v1/auth/whoami")
    output = controller.output()
    assert "listening on" in output  # we are reading the right log
    secrets = {
        "admin password": admin.password,
        "user password": USER_PASSWORD,
        "wrong password": "wrong password 777",
        "bootstrap code": controller.bootstrap_code,
        "admin session": admin.token,
        "user session": user.token,
        "api token": api["token"],
        "admin TOTP secret": admin.authenticator.secret,
        "user TOTP secret": user.authenticator.secret,
    }
    leaked = [what for what, secret in secrets.items() if secret in output]
    assert leaked == []


def test_secrets_stay_out_of_the_log_at_debug_level(fresh_controller: Callable[..., LocalController]) -> None:
    # Debug logging once printed every SQL statement with its parameters (TOTP secrets included).
    lc = fresh_controller({"ZEROGATE_LOG_LEVEL": "debug"})
    admin = lc.bootstrap_admin()
    created = admin.client.post("/v1/users", {"username": "hank"})
    api = admin.client.post("/v1/tokens", {"name": "debugcheck"})
    with lc.client(api["token"]) as c:
        c.get("/v1/auth/whoami")
    output = lc.output()
    assert "DEBUG" in output  # debug logging is really on
    secrets = {
        "admin password": admin.password,
        "bootstrap code": lc.bootstrap_code,
        "admin session": admin.token,
        "api token": api["token"],
        "activation code": created["activation_code"],
        "admin TOTP secret": admin.authenticator.secret,
    }
    leaked = [what for what, secret in secrets.items() if secret in output]
    assert leaked == []
    assert "$argon2id$" not in output  # nor password hashes
