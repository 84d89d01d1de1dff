"""The just-in-time page in a real headless Chromium (:mod:`zerogate.testbed.browser`).

Everything is real except the controller's one call (a fake that checks the password and
throttles like the controller; the tests that rely on it say ``fake_controller``): the
listener and its TLS, an SSH host whose nftables the opening changes, and a browser in a
client namespace of its own, so the address the listener sees is the browser's machine's.
One fleet, one listener and one browser serve the whole module (Chromium takes seconds to
start); each test uses its own user name, so the throttle of one does not touch another.

``ZEROGATE_SCREENSHOTS=1`` also saves the page after an opening as
``docs/screenshots/jit-page.png`` (for the README).
"""

from __future__ import annotations

import base64
import logging
import os
import secrets
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By

from jitfake import FakeController, tls_files
from zerogate.netops.command import run
from zerogate.netops.controller_api import ApiError
from zerogate.segment import hosts
from zerogate.segment.checks import tcp_connects
from zerogate.segment.jit import JitKeeper, parse_elements
from zerogate.segment.jit_listener import MESSAGES, JitListener, JitService
from zerogate.segment.plan import TABLE_FAMILY, TABLE_NAME
from zerogate.segment.ssh import Access
from zerogate.testbed.browser import NOWHERE_PROXY, Browser, chromium_arguments, other_site, spki_pin
from zerogate.testbed.sshhosts import (
    SERVER_ADDRESS,
    SshFleet,
    SshHost,
    call_in_netns,
    client_address,
    tcp_services,
)

pytestmark = [
    pytest.mark.xdist_group("jit-browser"),  # one worker: one fleet and one browser for the module
    pytest.mark.skipif(
        os.geteuid() != 0 or not Path("/usr/sbin/sshd").exists() or shutil.which("nft") is None,
        reason="needs root, network namespaces, nftables and OpenSSH's sshd",
    ),
]
PASSWORD = "correct horse battery"
CODE = "123456"
PORT = 8080
THROTTLE_LIMIT = 2
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "screenshots" / "jit-page.png"


class CheckingController(FakeController):
    """The controller call, faked: refuses a wrong password or code (401) and, like the
    controller, throttles a user at one address after :data:`THROTTLE_LIMIT` failures (429)."""

    def __init__(self) -> None:
        super().__init__()
        self.failures: dict[tuple[str, str], int] = {}

    def __call__(self, body: dict[str, Any]) -> Mapping[str, Any]:
        key = (body["username"], body["source"])
        if self.failures.get(key, 0) >= THROTTLE_LIMIT:
            self.bodies.append(body)
            raise ApiError(429, "throttled", None, 60.0)
        if body["password"] != PASSWORD or body["totp"] != CODE:
            self.bodies.append(body)
            self.failures[key] = self.failures.get(key, 0) + 1
            raise ApiError(401, "no", None)
        return super().__call__(body)


@dataclass
class Setup:
    fleet: SshFleet
    host: SshHost
    browser: Browser
    controller: CheckingController
    url: str

    def reaches(self, client: int) -> bool:
        ns = self.fleet.client_ns(client)
        return call_in_netns(ns, lambda: tcp_connects(self.host.address, PORT, 0.5))

    def openings(self) -> set[tuple[str, str]]:
        listing = self.fleet.nft(self.host, "list", "table", TABLE_FAMILY, TABLE_NAME).stdout
        return parse_elements(listing)

    def ask(self, user: str, password: str = PASSWORD, duration: str = "3600") -> str:
        """Fill the form on a fresh page as a user would and submit it: the answer's text."""
        self.browser.open(self.url)
        self.browser.fill({"User": user, "Password": password, "Code": CODE, "Asset": "host0",
                           "Port": str(PORT), "Protocol": "tcp", "Duration": duration})  # fmt: skip
        self.browser.click("Open")
        return self.browser.text()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("zjb")
    with SshFleet(1, tmp / "fleet", clients=2, prefix=f"zjb{secrets.token_hex(3)}") as fleet:
        host = fleet.hosts[0]
        access = Access(fleet.key, tmp / "state", remote_dir=str(tmp / "on-host"))
        asset = host.asset(mode="protected", rules_revision=2)
        assert fleet.call(lambda: hosts.enforce(asset, access, [SERVER_ADDRESS])).outcome == "applied"
        keeper = JitKeeper(access)
        keeper.update([asset])
        controller = CheckingController()
        _, cert, key = tls_files(tmp)
        service = JitService(keeper, controller)
        listener = fleet.call(
            lambda: JitListener(service, f"{SERVER_ADDRESS}:0", str(cert), str(key)).start()
        )
        try:
            browser = Browser(tmp / "browser", pinned=[cert.read_bytes()], direct=[str(SERVER_ADDRESS)],
                              netns=fleet.client_ns(0))  # fmt: skip
            with tcp_services(host, [PORT]), browser:
                yield Setup(fleet, host, browser, controller, f"https://{SERVER_ADDRESS}:{listener.port}/")
        finally:
            listener.stop()


@pytest.fixture(autouse=True)
def screenshot_on_failure(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[None]:
    yield
    rep = getattr(request.node, "rep_call", None)
    setup: Setup | None = request.node.funcargs.get("setup")
    if setup is not None and rep is not None and rep.failed:
        setup.browser.screenshot_after_failure(tmp_path)


def test_form_opens_exactly_the_browsers_address_fake_controller(setup: Setup) -> None:
    assert not setup.reaches(0) and not setup.reaches(1)
    before = len(setup.controller.bodies)
    text = setup.ask("alice", duration="14400")
    source = str(client_address(0))
    assert f"Opened: {source} to host0 tcp/{PORT} until " in text, text
    when = text.split(" until ", 1)[1].split("\n", 1)[0]
    until = datetime.strptime(when, "%Y-%m-%d %H:%M:%S UTC").replace(tzinfo=UTC)
    assert timedelta(hours=3, minutes=59) < until - datetime.now(UTC) <= timedelta(hours=4)
    assert setup.controller.bodies[before:] == [
        {"username": "alice", "password": PASSWORD, "totp": CODE, "asset": "host0", "protocol": "tcp",
         "port": PORT, "duration": 14400, "source": source}
    ]  # fmt: skip
    assert setup.reaches(0) and not setup.reaches(1)  # at once, and only the browser's machine
    assert ("jit4", f"{source} . tcp . {PORT}") in setup.openings()
    if os.environ.get("ZEROGATE_SCREENSHOTS") == "1":
        print(f"screenshot: {setup.browser.screenshot(SCREENSHOT)}")


def test_wrong_password_is_refused_and_opens_nothing_fake_controller(setup: Setup) -> None:
    openings = setup.openings()
    before = len(setup.controller.bodies)
    text = setup.ask("bob", password="not the password")
    assert MESSAGES[401] in text and "Opened" not in text
    assert "not the password" not in setup.browser.call(lambda d: d.page_source)  # never echoed
    assert len(setup.controller.bodies) == before + 1  # asked, refused
    assert setup.openings() == openings


def test_throttled_after_the_limit_without_asking_the_controller_fake_controller(setup: Setup) -> None:
    for _ in range(THROTTLE_LIMIT):
        assert MESSAGES[401] in setup.ask("mallory", password="guess")
    assert MESSAGES[429] in setup.ask("mallory", password="guess")  # the controller's verdict
    asked = len(setup.controller.bodies)
    text = setup.ask("mallory", password=PASSWORD)  # remembered: not even the right one is forwarded
    assert MESSAGES[429] in text and "Opened" not in text
    last = [r for r in setup.browser.network_responses() if r["url"] == setup.url][-1]
    assert last["status"] == 429 and 1 <= int(last["headers"]["retry-after"]) <= 60
    assert len(setup.controller.bodies) == asked


def test_page_headers_no_script_no_framing_fake_controller(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    setup.browser.network_responses()  # drop what came before
    setup.browser.console()
    setup.browser.open(setup.url)
    page = [r for r in setup.browser.network_responses() if r["url"] == setup.url][-1]
    headers = page["headers"]
    csp = [d.strip() for d in headers["content-security-policy"].split(";")]
    assert {"default-src 'none'", "form-action 'self'", "frame-ancestors 'none'"} <= set(csp)
    assert headers["x-frame-options"] == "DENY" and headers["cache-control"] == "no-store"
    assert headers["referrer-policy"] == "no-referrer" and headers["x-content-type-options"] == "nosniff"
    assert headers["strict-transport-security"].startswith("max-age=")
    assert setup.browser.call(lambda d: d.find_elements(By.TAG_NAME, "script")) == []
    totp = setup.browser.call(lambda d: d.find_element(By.NAME, "totp").get_attribute("autocomplete"))
    assert totp == "one-time-code"
    assert not [
        m for m in setup.browser.console() if "Content Security Policy" in m
    ]  # blocks nothing of its own

    # framed by another site: Chromium asks for the page but refuses to show it
    frame = f'<iframe src="{setup.url}" width="600" height="400"></iframe>'
    with (
        caplog.at_level(logging.DEBUG, logger="zerogate.segment.jit_listener"),
        other_site({"/": frame}, setup.fleet.client_ns(0)) as elsewhere,
    ):
        setup.browser.open(elsewhere + "/")

        def framed_form(d: WebDriver) -> int:
            d.switch_to.frame(d.find_element(By.TAG_NAME, "iframe"))
            try:
                return len(d.find_elements(By.NAME, "username"))
            finally:
                d.switch_to.default_content()

        assert setup.browser.call(framed_form) == 0
    # (the frame's requests are not in the top page's log: the listener's log says it answered)
    served = [r.args for r in caplog.records if r.msg == "jit listener: %s %s -> %s"]
    assert ("GET", "/", 200) in served


def test_cross_site_post_is_refused_fake_controller(setup: Setup) -> None:
    fields = {"username": "carol", "password": PASSWORD, "totp": CODE, "asset": "host0", "port": str(PORT),
              "protocol": "tcp", "duration": "3600"}  # fmt: skip
    inputs = "".join(f'<input type="hidden" name="{k}" value="{v}">' for k, v in fields.items())
    form = f'<form method="post" action="{setup.url}">{inputs}<button>Open</button></form>'
    asked = len(setup.controller.bodies)
    setup.browser.network_responses()
    with other_site({"/": form}, setup.fleet.client_ns(0)) as elsewhere:
        setup.browser.open(elsewhere + "/")
        setup.browser.click("Open")
        assert "cross-site request refused" in setup.browser.text()
    assert [r["status"] for r in setup.browser.network_responses() if r["url"] == setup.url] == [403]
    assert len(setup.controller.bodies) == asked


def test_browser_trusts_only_the_pinned_key(setup: Setup, tmp_path: Path) -> None:
    # the same name and address, a certificate from another CA with another key: refused
    _, cert, key = tls_files(tmp_path)
    service = JitService(JitKeeper(None), CheckingController())
    other = setup.fleet.call(lambda: JitListener(service, f"{SERVER_ADDRESS}:0", str(cert), str(key)).start())
    try:
        setup.browser.open(f"https://{SERVER_ADDRESS}:{other.port}/")
        assert setup.browser.call(lambda d: d.find_elements(By.NAME, "username")) == []
        assert "ERR_CERT_AUTHORITY_INVALID" in setup.browser.call(lambda d: d.page_source)
    finally:
        other.stop()
    setup.browser.open(setup.url)  # the pinned one still is
    assert setup.browser.call(lambda d: len(d.find_elements(By.NAME, "username"))) == 1


def test_chromium_pins_one_key_and_has_no_way_out(tmp_path: Path) -> None:
    _, cert, _ = tls_files(tmp_path)
    # the pin as OpenSSL computes it: SHA-256 of the DER SubjectPublicKeyInfo
    public = run(["openssl", "x509", "-in", str(cert), "-pubkey", "-noout"]).stdout
    der = tmp_path / "spki.der"
    run(["openssl", "pkey", "-pubin", "-outform", "DER", "-out", str(der)], input=public)
    digest = run(["openssl", "dgst", "-sha256", "-r", str(der)]).stdout.split()[0]
    pin = base64.b64encode(bytes.fromhex(digest)).decode()
    assert spki_pin(cert.read_bytes()) == pin
    args = chromium_arguments(tmp_path / "profile", [pin], ["10.99.0.1"], (800, 600))
    assert f"--ignore-certificate-errors-spki-list={pin}" in args
    assert "--ignore-certificate-errors" not in args  # pinning, not ignoring
    assert f"--user-data-dir={tmp_path / 'profile'}" in args and "--headless=new" in args
    assert f"--proxy-server={NOWHERE_PROXY}" in args and "--proxy-bypass-list=10.99.0.1" in args
