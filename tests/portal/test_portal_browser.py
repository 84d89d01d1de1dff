"""The admin portal in a real headless Chromium (:mod:`zerogate.testbed.browser`) against a
real controller, with a real ``zerogate connector`` enrolled from the portal's install string.

Layout: a network namespace ``zpt<hex>`` joined to the host by a veth pair; the controller
listens on the host's end, the browser (on the host, the controller's server key pinned) and
the connector (in the namespace) reach it there. The connector has no gateway, so its tunnel
stays down; "online" means it reports (controller/health.py), which is what the overview shows.

The tests run in order on one browser, one controller and one signed-in admin (Chromium takes
seconds to start); each checks through the API what the page did or did not change.
``ZEROGATE_SCREENSHOTS=1`` saves the main pages as ``docs/screenshots/portal-*.png``.
"""

from __future__ import annotations

import os
import random
import secrets
import shutil
import signal
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By

from zerogate.netops.command import run, spawn
from zerogate.testbed.browser import Browser
from zerogate.testbed.lab import wait_for
from zerogate.testbed.localrun import AccountSession, Authenticator, LocalController, zerogate_argv

pytestmark = [
    pytest.mark.xdist_group("portal-browser"),
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("nft") is None,
        reason="needs root, network namespaces and nftables (for the real connector)",
    ),
]
PASSWORD = "portal admin password 12345"
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
SUBNET = "10.61.0.0/24"
APP_ADDRESS = "10.61.0.10"


@dataclass
class Setup:
    tmp: Path
    ns: str
    controller: LocalController
    api: AccountSession  # the bootstrap admin: checks through the API
    admin: str  # the portal's admin
    auth: Authenticator
    browser: Browser
    base: str
    made: dict[str, str] = field(default_factory=dict)
    connector: subprocess.Popen[bytes] | None = None

    def open(self, path: str) -> str:
        self.browser.open(self.base + path)
        return self.browser.text()

    def secret(self) -> str:
        return self.browser.call(lambda d: str(d.find_element(By.ID, "secret").text)).strip()

    def shot(self, name: str) -> None:
        if os.environ.get("ZEROGATE_SCREENSHOTS") == "1":
            print(f"screenshot: {self.browser.screenshot(SCREENSHOTS / f'portal-{name}.png')}")

    def last_status(self, path: str) -> int:
        found = [r for r in self.browser.network_responses() if r["url"] == self.base + path]
        return int(found[-1]["status"])

    def audit(self, action: str) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = self.api.client.get("/v1/audit", {"action": action, "limit": 1000})
        return records


def _network(ns: str) -> tuple[str, str]:
    """The namespace and a veth pair to it; the host's and the namespace's addresses."""
    taken = run(["ip", "-4", "-o", "addr"], check=True).stdout
    octet = next(n for n in random.sample(range(1, 250), 249) if f"10.239.{n}." not in taken)
    host, inside = f"10.239.{octet}.1", f"10.239.{octet}.2"
    run(["ip", "netns", "add", ns], check=True)
    run(["ip", "link", "add", f"{ns}h", "type", "veth", "peer", "name", f"{ns}c", "netns", ns], check=True)
    run(["ip", "addr", "add", f"{host}/30", "dev", f"{ns}h"], check=True)
    run(["ip", "link", "set", f"{ns}h", "up"], check=True)
    for args in (["addr", "add", f"{inside}/30", "dev", f"{ns}c"], ["link", "set", f"{ns}c", "up"],
                 ["link", "set", "lo", "up"]):  # fmt: skip
        run(["ip", "-n", ns, *args], check=True)
    return host, inside


def _remove_network(ns: str) -> None:
    for pid in run(["ip", "netns", "pids", ns], check=False).stdout.split():
        try:
            os.kill(
                int(pid), signal.SIGKILL
            )  # left-overs of our connector (wireguard-go), in our namespace only
        except (OSError, ValueError):
            pass
    run(["ip", "link", "del", f"{ns}h"], check=False)
    run(["ip", "netns", "del", ns], check=False)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("zpt-browser")
    ns = f"zpt{secrets.token_hex(3)}"
    try:
        host, _ = _network(ns)
        with LocalController(tmp / "controller", host=host, log_path=tmp / "controller.log") as controller:
            controller.init().start()
            api = controller.bootstrap_admin("root", PASSWORD)
            created = api.client.post("/v1/admins", {"username": "operator"})
            auth = controller.activate_account("operator", created["activation_code"], PASSWORD)
            server_cert = ssl.get_server_certificate((host, controller.port)).encode()
            with Browser(tmp / "browser", pinned=[server_cert], direct=[host], size=(1280, 900)) as browser:
                s = Setup(tmp, ns, controller, api, "operator", auth, browser, controller.url)
                try:
                    yield s
                finally:
                    if s.connector is not None and s.connector.poll() is None:
                        s.connector.terminate()
                        try:
                            s.connector.wait(timeout=20)
                        except subprocess.TimeoutExpired:
                            s.connector.kill()
                            s.connector.wait(timeout=5)
    finally:
        _remove_network(ns)


@pytest.fixture(autouse=True)
def screenshot_on_failure(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[None]:
    yield
    rep = getattr(request.node, "rep_call", None)
    setup: Setup | None = request.node.funcargs.get("setup")
    if setup is not None and rep is not None and rep.failed:
        setup.browser.screenshot_after_failure(tmp_path)
        print(f"--- controller log (tail) ---\n{setup.controller.output()[-3000:]}")
        log = setup.tmp / "connector.log"
        if log.exists():
            print(f"--- connector log (tail) ---\n{log.read_text(errors='replace')[-3000:]}")


def test_without_a_session_the_portal_shows_only_the_sign_in_page(setup: Setup) -> None:
    group = f"zpt-hidden-{secrets.token_hex(3)}"
    setup.api.client.post("/v1/connector-groups", {"name": group, "subnets": ["10.62.0.0/24"]})
    text = setup.open("/portal/connectors")
    assert setup.browser.call(lambda d: d.current_url) == setup.base + "/portal/sign-in"
    assert "Sign in" in text and group not in text
    assert group not in setup.browser.call(lambda d: d.page_source)


def test_sign_in_with_password_and_totp(setup: Setup) -> None:
    setup.open("/portal/sign-in")
    setup.browser.fill({"Username": setup.admin, "Password": "wrong password", "Code": setup.auth.code()})
    setup.browser.click("Sign in")
    text = setup.browser.text()
    assert "wrong username, password or code" in text and "wrong password" not in text
    setup.browser.fill({"Username": setup.admin, "Password": PASSWORD, "Code": setup.auth.code()})
    setup.browser.click("Sign in")
    assert setup.browser.call(lambda d: d.current_url) == setup.base + "/portal/"
    assert "Overview" in setup.browser.text() and "Sign out" in setup.browser.text()
    logins = [r for r in setup.audit("login") if r["actor"] == f"admin:{setup.admin}"]
    assert [r["outcome"] for r in logins][-1] == "success"


def test_headers_csp_and_the_copy_script(setup: Setup) -> None:
    setup.browser.network_responses()
    setup.browser.console()
    setup.open("/portal/")
    page = [r for r in setup.browser.network_responses() if r["url"] == setup.base + "/portal/"][-1]
    h = page["headers"]
    assert h["content-security-policy"].startswith("default-src 'none'; script-src 'self'; style-src 'self'")
    assert h["cache-control"] == "no-store" and h["x-content-type-options"] == "nosniff"
    assert h["referrer-policy"] == "no-referrer"
    inline = setup.browser.call(
        lambda d: d.execute_script(
            "return [...document.scripts].filter(s => !s.src).length + document.querySelectorAll('[style]').length"
        )
    )
    assert inline == 0
    styled = setup.browser.call(
        lambda d: d.execute_script("return getComputedStyle(document.querySelector('header')).display")
    )
    assert styled == "flex"  # the stylesheet loaded under the CSP
    assert not [m for m in setup.browser.console() if "Content Security Policy" in m]


def test_create_a_group_and_a_key_and_enroll_a_connector_that_turns_online(setup: Setup) -> None:
    group = f"zpt-site-{secrets.token_hex(2)}"
    setup.made["group"] = group
    setup.open("/portal/connectors")
    setup.browser.fill({"Name": group, "Subnets": SUBNET})
    setup.browser.click("Create group")
    assert f"connector group {group} created" in setup.browser.text()
    assert setup.api.client.get(f"/v1/connector-groups/{group}")["subnets"] == [SUBNET]

    setup.browser.fill({"Group": group, "Valid for (minutes)": "30"})
    setup.browser.click("Create key")
    text = setup.browser.text()
    install = setup.secret()
    assert install.startswith("zg1.") and "shown once" in text and "Expires" in text
    setup.browser.call(lambda d: d.find_element(By.XPATH, '//button[normalize-space(.)="Copy"]').click())
    label = setup.browser.call(lambda d: str(d.find_element(By.CSS_SELECTOR, "button.copy").text))
    assert label in ("Copied", "Selected: press Ctrl+C")  # the script ran (a handler of copy.js)
    setup.shot("connectors")
    assert install not in setup.open("/portal/connectors")  # shown once: not on the next visit
    keys = setup.api.client.get("/v1/provisioning-keys")
    assert any(k["target"] == f"connector-group:{group}" and k["state"] == "usable" for k in keys)

    name = f"zptcn{secrets.token_hex(2)}"
    setup.made["connector"] = name
    state = setup.tmp / "connector-state"
    zg = ["ip", "netns", "exec", setup.ns, *zerogate_argv(), "connector"]
    enrolled = run(
        [*zg, "enroll", install, "--state-dir", str(state), "--name", name], check=False, timeout=60
    )
    assert enrolled.returncode == 0, enrolled.stderr + enrolled.stdout
    with open(setup.tmp / "connector.log", "ab") as log:
        setup.connector = spawn(
            [*zg, "run", "--state-dir", str(state), "--interface", f"{setup.ns}w", "--log-level", "debug"],
            stdout=log,
        )

    def online_in_portal() -> bool:
        text = setup.open("/portal/")
        row = setup.browser.call(
            lambda d: [
                str(e.text) for e in d.find_elements(By.XPATH, f'//tr[td[1][normalize-space(.)="{name}"]]')
            ]
        )
        return bool(row) and " online " in f" {row[0]} " and "Connectors: 1 online" in text

    wait_for(online_in_portal, 60, f"connector {name} online on the overview")
    text = setup.browser.text()
    assert f"connector {name}: tunnel down" in text  # no gateway: reported, and flagged
    status = setup.api.client.get("/v1/status", {"role": "connector"})
    assert next(c for c in status["components"] if c["name"] == name)["online"] is True
    setup.shot("overview")


def test_create_a_policy_and_explain_a_decision(setup: Setup) -> None:
    group, user = f"zpt-eng-{secrets.token_hex(2)}", f"zptalice{secrets.token_hex(2)}"
    app, policy = f"zpt-db-{secrets.token_hex(2)}", f"zpt-pol-{secrets.token_hex(2)}"
    setup.made["policy"] = policy
    setup.open("/portal/users")
    setup.browser.fill({"Group name": group})
    setup.browser.click("Create group")
    setup.browser.fill({"Username": user, "Groups": group})
    setup.browser.click("Create user")
    code = setup.secret()
    assert f"Activation code for {user}" in setup.browser.text() and len(code) >= 8
    setup.controller.activate_account(user, code, "user password 12345")  # the user sets up the account

    setup.open("/portal/applications")
    setup.browser.fill({"Name": app, "Connector group": setup.made["group"], "Address": f"{APP_ADDRESS}/32",
                        "Protocol": "tcp", "Ports": "5432"})  # fmt: skip
    setup.browser.click("Create application")
    assert f"application {app} created" in setup.browser.text()

    setup.open("/portal/policies")
    setup.browser.fill({"Policy name": policy, "Groups": group, "Applications": app})
    setup.browser.click("Create policy")
    assert f"policy {policy} created" in setup.browser.text()
    made = setup.api.client.get(f"/v1/policies/{policy}")
    assert made["groups"] == [group] and made["applications"] == [app]

    setup.browser.fill({"User": user, "Destination": f"{APP_ADDRESS}:22"})
    setup.browser.click("Explain")
    refused = setup.browser.call(lambda d: str(d.find_element(By.ID, "decision").text))
    assert "Refused" in refused and policy not in refused
    setup.browser.fill({"User": user, "Destination": f"{APP_ADDRESS}:5432"})
    setup.browser.click("Explain")
    decision = setup.browser.call(lambda d: str(d.find_element(By.ID, "decision").text))
    assert f"Allowed by policy {policy}" in decision, decision
    api = setup.api.client.post(
        "/v1/policy/explain", {"username": user, "destination": APP_ADDRESS, "port": 5432, "protocol": "tcp"}
    )
    assert api["allowed"] and api["policy"] == policy and api["reason"] in decision
    setup.shot("policies")


def test_the_actions_are_in_the_audit_log_and_the_chain_verifies(setup: Setup) -> None:
    text = setup.open("/portal/audit")
    actor = f"admin:{setup.admin}"
    for action in ("create-connector-group", "create-provisioning-key", "create-policy", "login"):
        xpath = f'//tr[td[5][normalize-space(.)="{action}"]]'

        def rows_of(d: WebDriver, xpath: str = xpath) -> list[str]:
            return [str(e.text) for e in d.find_elements(By.XPATH, xpath)]

        rows = setup.browser.call(rows_of)
        assert any(actor in r and "success" in r for r in rows), (action, text[:2000])
    setup.browser.fill({"Action": "create-policy"})
    setup.browser.click("Filter")
    filtered = setup.browser.text()
    assert setup.made["policy"] in filtered and "create-connector-group" not in filtered
    setup.browser.click("Verify chain")
    verification = setup.browser.call(lambda d: str(d.find_element(By.ID, "verification").text))
    assert verification.startswith("Chain verified"), verification
    assert setup.api.client.get("/v1/audit/verify")["ok"] is True
    setup.open("/portal/audit")
    setup.shot("audit")


def test_a_bad_csrf_token_is_refused_and_changes_nothing(setup: Setup) -> None:
    group = f"zpt-forged-{secrets.token_hex(2)}"
    setup.open("/portal/connectors")
    setup.browser.call(
        lambda d: d.execute_script(
            "for (const f of document.querySelectorAll('input[name=csrf]')) f.value = 'A'.repeat(43);"
        )
    )
    setup.browser.network_responses()
    setup.browser.fill({"Name": group, "Subnets": "10.63.0.0/24"})
    setup.browser.click("Create group")
    assert "Refused (403)" in setup.browser.text() and group not in setup.browser.text()
    assert setup.last_status("/portal/connectors/groups") == 403
    assert group not in [g["name"] for g in setup.api.client.get("/v1/connector-groups")]
    assert not [r for r in setup.audit("create-connector-group") if group in str(r["details"])]


def test_sign_out_ends_the_session(setup: Setup) -> None:
    setup.open("/portal/")
    setup.browser.click("Sign out")
    assert setup.browser.call(lambda d: d.current_url) == setup.base + "/portal/sign-in"
    text = setup.open("/portal/policies")
    assert "Sign in" in text and setup.made["policy"] not in text
    logouts = setup.audit("logout")
    assert logouts[-1]["actor"] == f"admin:{setup.admin}" and logouts[-1]["outcome"] == "success"
