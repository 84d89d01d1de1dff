"""The admin portal over plain HTTPS (no browser) against a real controller: headers,
the session cookie, CSRF and cross-site refusals, sign-out, the sign-in throttle, admins only.

What each refused request did *not* change is checked through the API."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path

import httpx
import pytest
from portal_client import COOKIE, PortalClient

from apiaccess import enroll_connector, enroll_gateway, raw
from zerogate.testbed.localrun import AccountSession, Authenticator, LocalController

PASSWORD = "correct horse battery staple"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
ACCOUNT_FAILURES = 3  # wrong sign-ins of one account before it is throttled


@pytest.fixture(scope="module")
def controller(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalController]:
    base = tmp_path_factory.mktemp("zpt-http")
    # a throttled account waits 60 s (doubling): long enough for the test to see it
    env = {
        "ZEROGATE_LOGIN_FAILURES_PER_ACCOUNT": str(ACCOUNT_FAILURES),
        "ZEROGATE_THROTTLE_DELAY_SECONDS": "60",
    }
    with LocalController(base / "data", extra_env=env) as lc:
        lc.init().start()
        yield lc


@pytest.fixture(scope="module")
def admin(controller: LocalController) -> AccountSession:
    return controller.bootstrap_admin("root", PASSWORD)


@pytest.fixture(scope="module")
def portal(controller: LocalController, admin: AccountSession) -> Iterator[PortalClient]:
    """One signed-in portal session for the module: each sign-in takes a fresh TOTP step."""
    username, auth = new_admin(controller, admin)
    client = PortalClient(controller)
    try:
        client.sign_in_as(username, PASSWORD, auth)
        client.username = username
        yield client
    finally:
        client.close()


def new_admin(controller: LocalController, admin: AccountSession) -> tuple[str, Authenticator]:
    """Another admin with an authenticator of its own (so its codes wait for no one's)."""
    username = f"zpt{uuid.uuid4().hex[:6]}"
    created = admin.client.post("/v1/admins", {"username": username})
    return username, controller.activate_account(username, created["activation_code"], PASSWORD)


def name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def assert_headers(h: httpx.Headers) -> None:
    assert h["content-security-policy"] == CSP
    assert h["x-content-type-options"] == "nosniff"
    assert h["referrer-policy"] == "no-referrer"
    assert h["cache-control"] == "no-store"
    assert h["x-frame-options"] == "DENY"


def test_without_a_session_every_page_redirects_to_sign_in_and_shows_no_data(
    controller: LocalController, admin: AccountSession
) -> None:
    group = name("zpt-secret")
    admin.client.post("/v1/connector-groups", {"name": group, "subnets": ["10.91.0.0/24"]})
    client = PortalClient(controller)
    try:
        for page in ("/portal/", "/portal/connectors", "/portal/users", "/portal/policies", "/portal/audit",
                     "/portal/gateways", "/portal/applications", "/portal/address-pool", "/portal/segment"):  # fmt: skip
            r = client.http.get(page)
            assert r.status_code == 303 and r.headers["location"] == "/portal/sign-in", page
            assert group not in r.text and "csrf" not in r.text
            assert_headers(r.headers)
        client.http.cookies.set(COOKIE, "zgt_" + "A" * 43, domain=controller.host, path="/portal")
        r = client.http.get("/portal/connectors")  # a made-up token is no session either
        assert r.status_code == 303 and group not in r.text
        sign_in = client.http.get("/portal/sign-in")
        assert sign_in.status_code == 200 and 'name="totp"' in sign_in.text
        assert_headers(sign_in.headers)
    finally:
        client.close()


def test_sign_in_sets_a_strict_session_cookie_that_is_an_api_session(
    controller: LocalController, admin: AccountSession
) -> None:
    username, auth = new_admin(controller, admin)
    client = PortalClient(controller)
    try:
        r = client.sign_in(username, PASSWORD, auth.code())
        assert r.status_code == 303 and r.headers["location"] == "/portal/"
        assert_headers(r.headers)
        cookie = r.headers["set-cookie"]
        attributes = {part.strip().split("=", 1)[0].lower() for part in cookie.split(";")}
        assert cookie.startswith(f"{COOKIE}=zgt_")
        assert {"secure", "httponly", "path", "samesite", "expires"} <= attributes
        assert "Path=/portal" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
        expires = parsedate_to_datetime(cookie.split("expires=", 1)[1].split(";")[0])
        assert abs(expires - (datetime.now(UTC) + timedelta(hours=12))) < timedelta(minutes=2)
        # the same kind of session the API issues: the token works as a bearer token
        who = raw(controller, "GET", "/v1/auth/whoami", token=client.token).json()
        assert who["kind"] == "admin" and who["name"] == username and who["mfa"] is True
        page = client.http.get("/portal/")
        assert page.status_code == 200 and "Overview" in page.text
        assert_headers(page.headers)
        css = client.http.get("/portal/static/portal.css")
        assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
        assert_headers(css.headers)
        assert client.http.get("/portal/static/../app.py").status_code == 404
    finally:
        client.close()


def test_forms_without_the_right_csrf_token_or_from_another_site_are_403_and_change_nothing(
    portal: PortalClient, admin: AccountSession
) -> None:
    token = portal.csrf("/portal/connectors")
    attempts = [
        ({}, {}),  # no token
        ({"csrf": "x" * 43}, {}),  # a wrong one
        ({"csrf": token[:-1] + ("A" if token[-1] != "A" else "B")}, {}),
        ({"csrf": token}, {"Sec-Fetch-Site": "cross-site"}),  # the right one, from another site
        ({"csrf": token}, {"Sec-Fetch-Site": "same-site"}),
    ]
    before = admin.client.get("/v1/audit/verify")["head_id"]
    for extra, headers in attempts:
        group = name("zpt-csrf")
        r = portal.post(
            "/portal/connectors/groups", {"name": group, "subnets": "10.92.0.0/24"} | extra, **headers
        )
        assert r.status_code == 403, (extra, headers)
        assert_headers(r.headers)
        assert group not in r.text
        assert group not in [g["name"] for g in admin.client.get("/v1/connector-groups")]
    no_fetch_metadata = portal.http.post(
        "/portal/connectors/groups",
        data={"name": name("zpt-csrf"), "subnets": "10.92.0.0/24", "csrf": token},
        headers={"Origin": "https://evil.example"},
    )
    assert no_fetch_metadata.status_code == 403
    assert admin.client.get("/v1/audit/verify")["head_id"] == before  # nothing was even attempted

    group = name("zpt-ok")
    r = portal.post(
        "/portal/connectors/groups", {"name": group, "subnets": "10.92.0.0/24", "snat": "on"}, csrf=token
    )
    assert r.status_code == 201 and f"connector group {group} created" in r.text
    made = admin.client.get(f"/v1/connector-groups/{group}")
    assert made["subnets"] == ["10.92.0.0/24"] and made["snat"] is True
    record = admin.client.get("/v1/audit", {"action": "create-connector-group", "after_id": before})[-1]
    assert record["actor"] == f"admin:{portal.username}" and record["outcome"] == "success"


def test_refusals_are_shown_without_echoing_the_input(portal: PortalClient, admin: AccountSession) -> None:
    token = portal.csrf("/portal/connectors")
    bad = "<b>zpt-" + uuid.uuid4().hex[:6] + "</b>"
    r = portal.post("/portal/connectors/groups", {"name": bad, "subnets": "10.93.0.0/24"}, csrf=token)
    assert r.status_code == 422 and 'class="error"' in r.text
    assert bad not in r.text and bad[3:-4] not in r.text
    taken = name("zpt-dup")
    admin.client.post("/v1/connector-groups", {"name": taken, "subnets": ["10.94.0.0/24"]})
    r = portal.post("/portal/connectors/groups", {"name": taken, "subnets": "10.95.0.0/24"}, csrf=token)
    assert (
        r.status_code == 409 and taken not in r.text.split("<main>", 1)[1].split("Connector groups</h2>")[0]
    )
    r = portal.http.get("/portal/audit", params={"action": "x", "bogus": "<i>zpt</i>"})
    assert r.status_code == 422 and "<i>zpt</i>" not in r.text and "&lt;i&gt;" not in r.text
    assert_headers(r.headers)
    r = portal.http.get("/portal/audit", params={"limit": "<i>zpt</i>"})
    assert r.status_code == 422 and "zpt" not in r.text and r.headers["content-type"].startswith("text/html")
    assert_headers(r.headers)


def test_sign_out_ends_the_session_on_the_controller(
    controller: LocalController, admin: AccountSession
) -> None:
    username, auth = new_admin(controller, admin)
    client = PortalClient(controller)
    try:
        client.sign_in_as(username, PASSWORD, auth)
        token = client.token
        assert raw(controller, "GET", "/v1/auth/whoami", token=token).json()["kind"] == "admin"
        bad = client.post("/portal/sign-out", {"csrf": "y" * 43})
        assert bad.status_code == 403
        assert raw(controller, "GET", "/v1/auth/whoami", token=token).json()["kind"] == "admin"
        r = client.post("/portal/sign-out", {}, csrf=client.csrf())
        assert r.status_code == 303 and r.headers["location"] == "/portal/sign-in"
        assert COOKIE in r.headers["set-cookie"] and "Max-Age=0" in r.headers["set-cookie"]
        assert raw(controller, "GET", "/v1/auth/whoami", token=token).status_code == 401  # revoked
        client.http.cookies.set(COOKIE, token, domain=controller.host, path="/portal")
        assert client.http.get("/portal/").status_code == 303  # the old cookie is no session
        logouts = admin.client.get("/v1/audit", {"action": "logout"})
        assert logouts[-1]["actor"] == f"admin:{username}" and logouts[-1]["outcome"] == "success"
    finally:
        client.close()


def test_wrong_totp_codes_are_throttled_like_the_api(
    controller: LocalController, admin: AccountSession
) -> None:
    username, auth = new_admin(controller, admin)
    client = PortalClient(controller)
    try:
        wrong = "000000"  # (a right code with odds of one in a million: the test would then fail)
        for _ in range(ACCOUNT_FAILURES):
            r = client.sign_in(username, PASSWORD, wrong)
            assert r.status_code == 401 and "wrong username, password or code" in r.text
            assert COOKIE not in r.headers.get("set-cookie", "")
        r = client.sign_in(username, PASSWORD, auth.code())  # even the right code, while throttled
        assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 60
        assert COOKIE not in r.headers.get("set-cookie", "") and PASSWORD not in r.text
        assert_headers(r.headers)
        refused = admin.client.get("/v1/audit", {"action": "login"})
        assert any(x["outcome"] != "success" and x["object_id"] for x in refused)
    finally:
        client.close()


def test_a_user_account_cannot_use_the_portal(controller: LocalController, admin: AccountSession) -> None:
    username = f"zptu{uuid.uuid4().hex[:6]}"
    created = admin.client.post("/v1/users", {"username": username})
    auth: Authenticator = controller.activate_account(username, created["activation_code"], PASSWORD)
    client = PortalClient(controller)
    try:
        r = client.sign_in(username, PASSWORD, auth.code())
        assert r.status_code == 403 and "admin accounts" in r.text
        assert COOKIE not in r.headers.get("set-cookie", "")
        logout = admin.client.get("/v1/audit", {"action": "logout"})[-1]
        assert logout["actor"] == f"user:{username}"  # the session made by the sign-in was ended
    finally:
        client.close()


def test_template_and_static_files_are_package_data() -> None:
    root = Path(__file__).resolve().parents[2]
    toml = (root / "pyproject.toml").read_text()
    assert "controller/portal/templates/*.html" in toml and "controller/portal/static/*" in toml


def test_every_page_renders_for_an_admin_with_the_headers(portal: PortalClient) -> None:
    for page in ("/portal/", "/portal/connectors", "/portal/gateways", "/portal/users", "/portal/applications",
                 "/portal/policies", "/portal/address-pool", "/portal/audit", "/portal/audit/verify",
                 "/portal/segment", "/portal/flows", "/portal/static/copy.js"):  # fmt: skip
        r = portal.http.get(page)
        assert r.status_code == 200, page
        assert_headers(r.headers)
    assert "Chain verified" in portal.http.get("/portal/audit/verify").text


def test_revoke_a_connector_and_disable_a_user_through_the_services(
    controller: LocalController, admin: AccountSession, portal: PortalClient
) -> None:
    device = enroll_connector(controller, admin, "zpt-rv", "10.96.0.0/24")
    token = portal.csrf("/portal/connectors")
    r = portal.post("/portal/connectors/revoke", {"connector": device["name"]}, csrf=token)
    assert r.status_code == 200 and "connector revoked" in r.text
    assert device["name"] not in [c["name"] for c in admin.client.get("/v1/connectors")]
    listed = admin.client.get("/v1/devices", {"role": "connector"})
    assert next(d for d in listed if d["id"] == device["device_id"])["status"] == "revoked"
    report = {"version": "1", "interface": "zg-cn"}
    assert raw(controller, "POST", "/v1/report", report, token=device["credential"]).status_code == 401
    r = portal.post("/portal/connectors/revoke", {"connector": device["name"]}, csrf=token)
    assert r.status_code == 404 and device["name"] not in r.text.split("<main>", 1)[1].split("<h2>")[0]

    username = f"zptu{uuid.uuid4().hex[:6]}"
    r = portal.post("/portal/users", {"username": username, "groups": ""}, csrf=token)
    assert r.status_code == 201 and f"Activation code for {username}" in r.text
    code = r.text.split('<pre id="secret">', 1)[1].split("</pre>", 1)[0]
    assert code not in portal.http.get("/portal/users").text  # shown once
    controller.activate_account(username, code, PASSWORD)  # the code the page showed works
    r = portal.post("/portal/users/disable", {"username": username}, csrf=token)
    assert r.status_code == 200 and f"user {username} disabled" in r.text
    assert admin.client.get(f"/v1/users/{username}")["status"] == "disabled"
    record = admin.client.get("/v1/audit", {"action": "update-user"})[-1]
    assert record["actor"] == f"admin:{portal.username}" and record["details"] == {"disabled": True}


def test_explain_takes_address_and_port_as_typed(portal: PortalClient, admin: AccountSession) -> None:
    username = f"zpte{uuid.uuid4().hex[:6]}"
    admin.client.post("/v1/users", {"username": username})
    token = portal.csrf("/portal/policies")
    r = portal.post(
        "/portal/policies/explain", {"username": username, "destination": "10.97.0.1:5432"}, csrf=token
    )
    assert r.status_code == 200 and 'id="decision"' in r.text and "Refused" in r.text
    for typed in ("10.97.0.1:http", "nonsense", "[fd00::1]:99999"):
        r = portal.post("/portal/policies/explain", {"username": username, "destination": typed}, csrf=token)
        assert r.status_code == 422 and 'id="decision"' not in r.text, typed


def test_drain_a_connector_and_resume_it(
    controller: LocalController, admin: AccountSession, portal: PortalClient
) -> None:
    device = enroll_connector(controller, admin, "zpt-dr", "10.96.1.0/24")
    token = portal.csrf("/portal/connectors")

    def draining() -> bool:
        return bool(admin.client.get(f"/v1/connectors/{device['name']}")["draining"])

    r = portal.post("/portal/connectors/drain", {"connector": device["name"], "draining": "true"}, csrf=token)
    assert r.status_code == 200 and "connector draining" in r.text and draining()
    record = admin.client.get("/v1/audit", {"action": "update-connector"})[-1]
    assert record["actor"] == f"admin:{portal.username}" and record["details"].get("draining") is True
    r = portal.post(
        "/portal/connectors/drain", {"connector": device["name"], "draining": "false"}, csrf=token
    )
    assert r.status_code == 200 and "takes new flows" in r.text and not draining()
    r = portal.post(
        "/portal/connectors/drain", {"connector": device["name"], "draining": "true"}, csrf="x" * 43
    )
    assert r.status_code == 403 and not draining()  # a forged token changes nothing


def test_the_flows_page_lists_what_gateways_recorded_with_filters(
    controller: LocalController, admin: AccountSession, portal: PortalClient
) -> None:
    _, _, credential = enroll_gateway(controller, admin)
    end = datetime.now(UTC)
    port = 20000 + uuid.uuid4().int % 20000
    refused = {
        "start": (end - timedelta(seconds=2)).isoformat(), "end": end.isoformat(), "client": "100.64.9.9",
        "protocol": "tcp", "destination": "10.96.2.5", "port": port, "denied": "no-policy", "packets_out": 2,
        "bytes_out": 120,
    }  # fmt: skip
    r = raw(controller, "POST", "/v1/flows", {"records": [refused]}, token=credential)
    assert r.status_code == 202, r.text[:300]
    shown = portal.http.get("/portal/flows", params={"shown": "refused"})
    assert (
        shown.status_code == 200
        and f"10.96.2.5:{port}/tcp" in shown.text
        and "refused: no-policy" in shown.text
    )
    assert_headers(shown.headers)
    forwarded = portal.http.get("/portal/flows", params={"shown": "forwarded"})
    assert f"10.96.2.5:{port}/tcp" not in forwarded.text
    for bad in ({"shown": "everything"}, {"user": "a b<script>"}, {"after_id": "-1"}):
        r = portal.http.get("/portal/flows", params=bad)
        assert r.status_code == 422 and "<script>" not in r.text
