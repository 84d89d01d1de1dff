"""A headless Chromium driven by Selenium, for tests of the web pages (JIT page, portal).

Nothing is downloaded and nothing leaves the machine:

- the system's ``/usr/bin/chromium`` and ``/usr/bin/chromedriver`` (Debian's packages,
  which ``make test`` installs) are used by path, and ``SE_OFFLINE=true`` is set, so
  Selenium Manager (which would fetch drivers) is never run. A missing binary is a
  :class:`BrowserError`, not a skip: the tests that need a browser must not pass silently;
- every connection except to the hosts named in ``direct`` (and loopback, which
  Chromium never proxies unless told) goes to a proxy address on which nothing listens,
  and the background services (updates, safe browsing, metrics) are switched off, so the
  browser reaches only what the test started.

TLS: the browser trusts the system's CAs and, besides, exactly the server keys given in
``pinned`` (``--ignore-certificate-errors-spki-list``, the base64 SHA-256 of each
certificate's SubjectPublicKeyInfo). That is pinning one key, not ignoring errors: another
certificate for the same name is still refused.

Namespaces: with ``netns``, chromedriver and Chromium run in that network namespace, and so
must every connection Selenium makes to chromedriver. Selenium opens them on the calling
thread, so each WebDriver call goes through :meth:`Browser.call`, which runs it on a thread
that joined the namespace (:func:`~zerogate.testbed.sshhosts.call_in_netns`). Use
:meth:`Browser.call` (or the helpers built on it) for everything, never the driver directly.

Lifetime: :meth:`Browser.close` quits the driver, stops any browser process it leaves behind
(by PID, found as descendants of chromedriver) and removes the private profile directory;
it never raises. Keep one browser per test module: starting Chromium costs a second or two.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.wait import WebDriverWait

from zerogate.testbed.sshhosts import call_in_netns
from zerogate.testbed.topology import TestbedError

T = TypeVar("T")

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
NOWHERE_PROXY = "http://127.0.0.1:9"  # the discard port: nothing listens, every proxied request fails
CALL_TIMEOUT = 60.0
_QUIET = [
    "--disable-background-networking", "--disable-component-update", "--disable-default-apps",
    "--disable-domain-reliability", "--disable-sync", "--disable-extensions", "--no-first-run",
    "--no-default-browser-check", "--no-pings", "--disable-client-side-phishing-detection",
    "--metrics-recording-only", "--disable-features=OptimizationHints,Translate,MediaRouter",
    "--password-store=basic", "--disable-dev-shm-usage",
]  # fmt: skip


class BrowserError(TestbedError):
    """The browser could not be started (missing binary, driver failure); the message says which."""


def spki_pin(certificate_pem: bytes) -> str:
    """The base64 SHA-256 of a PEM certificate's SubjectPublicKeyInfo (Chromium's pin form)."""
    cert = x509.load_pem_x509_certificate(certificate_pem)
    der = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


def chromium_arguments(
    profile: Path, pins: Sequence[str], direct: Sequence[str], size: tuple[int, int]
) -> list[str]:
    """Chromium's command line (tested as text): headless, private profile, pinned keys, no way out."""
    args = ["--headless=new", f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}", *_QUIET]
    if os.geteuid() == 0:
        args.append("--no-sandbox")  # as root, Chromium starts only without its sandbox
    if pins:
        args.append(f"--ignore-certificate-errors-spki-list={','.join(pins)}")
    args.append(f"--proxy-server={NOWHERE_PROXY}")
    if direct:
        args.append(f"--proxy-bypass-list={';'.join(direct)}")
    return args


def _processes() -> dict[int, tuple[int, str]]:
    """Every process: PID -> (parent PID, start time), from /proc (start time tells a reused PID)."""
    found: dict[int, tuple[int, str]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()
                found[int(entry.name)] = (int(fields[1]), fields[19])
    return found


def descendants(pid: int) -> dict[int, str]:
    """The processes below ``pid``: PID -> start time."""
    table = _processes()
    found: dict[int, str] = {}
    frontier = {pid}
    while frontier:
        frontier = {p for p, (parent, _) in table.items() if parent in frontier}
        found.update({p: table[p][1] for p in frontier})
    return found


def _log(driver: WebDriver, kind: str) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = driver.get_log(kind)  # type: ignore[no-untyped-call]
    return entries


class Browser:
    """One headless Chromium session (see the module): ``with Browser(tmp, ...) as b:``."""

    def __init__(
        self,
        workdir: Path,
        *,
        pinned: Sequence[bytes] = (),
        direct: Sequence[str] = (),
        netns: str | None = None,
        size: tuple[int, int] = (900, 720),
    ) -> None:
        self.workdir, self.netns, self.size = workdir, netns, size
        self.pins = [spki_pin(pem) for pem in pinned]
        self.direct = list(direct)
        self.profile: Path | None = None
        self.driver: WebDriver | None = None
        self.driver_log = workdir / "chromedriver.log"

    def __enter__(self) -> Browser:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> Browser:
        for binary in (CHROMIUM, CHROMEDRIVER):
            if not os.access(binary, os.X_OK):
                raise BrowserError(f"{binary} is missing: install Debian's chromium and chromium-driver")
        os.environ["SE_OFFLINE"] = "true"  # Selenium Manager, should anything reach it, stays offline
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.profile = Path(tempfile.mkdtemp(prefix="zjb-chromium-", dir=self.workdir))
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for arg in chromium_arguments(self.profile, self.pins, self.direct, self.size):
            options.add_argument(arg)
        options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
        service = Service(executable_path=str(CHROMEDRIVER), log_output=str(self.driver_log))

        def create() -> WebDriver:
            return webdriver.Chrome(service=service, options=options)

        try:
            self.driver = create() if self.netns is None else call_in_netns(self.netns, create, CALL_TIMEOUT)
        except WebDriverException as exc:
            raise BrowserError(f"Chromium did not start ({exc.msg}); see {self.driver_log}") from None
        return self

    def close(self) -> None:
        """Quit the driver, stop what it left running (by PID), remove the profile; never raises."""
        driver, self.driver = self.driver, None
        if driver is not None:
            process = driver.service.process
            started = descendants(process.pid) if process is not None else {}
            with contextlib.suppress(Exception):
                self._run(driver.quit, 30)
            if process is not None and process.poll() is None:
                with contextlib.suppress(OSError):
                    process.kill()
            now = _processes()
            for pid, start in started.items():  # normally gone: quit ends them
                if pid in now and now[pid][1] == start:
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
        if self.profile is not None:
            shutil.rmtree(self.profile, ignore_errors=True)
            self.profile = None

    # ------------------------------------------------------------------ using it

    def _run(self, fn: Callable[[], T], timeout: float = CALL_TIMEOUT) -> T:
        return fn() if self.netns is None else call_in_netns(self.netns, fn, timeout)

    def call(self, fn: Callable[[WebDriver], T], timeout: float = CALL_TIMEOUT) -> T:
        """``fn(driver)``, on a thread in the browser's namespace when it has one."""
        driver = self.driver
        if driver is None:
            raise BrowserError("the browser is not running")
        return self._run(lambda: fn(driver), timeout)

    def open(self, url: str) -> None:
        self.call(lambda d: d.get(url))

    def fill(self, fields: Mapping[str, str]) -> None:
        """Type into the (empty) form controls, or choose in them, found by their *label* text, as
        a user does: a control without a label is not found."""

        def fill(d: WebDriver) -> None:
            for label, value in fields.items():
                control = d.find_element(By.XPATH, f'//label[normalize-space(text())="{label}"]/*[1]')
                if control.tag_name == "select":
                    control.find_element(By.XPATH, f'.//option[@value="{value}" or text()="{value}"]').click()
                else:
                    control.send_keys(value)

        self.call(fill)

    def click(self, text: str) -> None:
        """Click the button with this text and wait for the page it loads."""

        def click(d: WebDriver) -> None:
            old = d.find_element(By.TAG_NAME, "html")
            d.find_element(By.XPATH, f'//button[normalize-space(.)="{text}"]').click()

            def replaced(_: WebDriver) -> bool:
                # staleness_of, but Chromium may also answer "node does not belong to the
                # document" while the old page goes away: that too means it was replaced.
                try:
                    old.is_enabled()
                except WebDriverException:
                    return True
                return False

            WebDriverWait(d, CALL_TIMEOUT).until(replaced)

        self.call(click)

    def text(self) -> str:
        """The visible text of the page."""
        return self.call(lambda d: str(d.find_element(By.TAG_NAME, "body").text))

    def network_responses(self) -> list[dict[str, Any]]:
        """The responses the browser received since the last call (DevTools' ``Network.responseReceived``:
        ``url``, ``status``, ``headers`` with lower-case names)."""
        entries = self.call(lambda d: _log(d, "performance"))
        found = []
        for entry in entries:
            message = json.loads(entry["message"])["message"]
            if message.get("method") == "Network.responseReceived":
                response = message["params"]["response"]
                headers = {k.lower(): v for k, v in response.get("headers", {}).items()}
                found.append({"url": response["url"], "status": response["status"], "headers": headers})
        return found

    def console(self) -> list[str]:
        """The browser console's messages since the last call (CSP violations show up here)."""
        return [str(e.get("message", "")) for e in self.call(lambda d: _log(d, "browser"))]

    def screenshot(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not self.call(lambda d: d.save_screenshot(str(path))):
            raise BrowserError(f"the screenshot {path} could not be written")
        return path

    def screenshot_after_failure(self, directory: Path) -> Path | None:
        """After a failed test: the page as it was, into ``directory``, its path printed; never raises."""
        try:
            path = self.screenshot(directory / "browser-failure.png")
        except Exception as exc:  # the browser may be what failed
            print(f"no browser screenshot: {exc}")
            return None
        print(f"browser screenshot: {path}")
        return path


@contextlib.contextmanager
def other_site(pages: Mapping[str, str], netns: str | None = None) -> Iterator[str]:
    """A plain-HTTP site on 127.0.0.1 (in ``netns`` when given: the browser's own loopback)
    serving fixed HTML ``pages`` by path: the *other* origin of cross-site tests (a page that
    frames ours, a form that posts to it). Yields its base URL; stopped afterwards.

    Why not a ``data:`` URL: Chromium's Local Network Access refuses a frame or fetch from such
    an opaque, non-secure page to a private address, so it would never test our headers."""

    class Pages(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = pages.get(self.path)
            data = (body or "not found").encode()
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    def bind() -> ThreadingHTTPServer:
        return ThreadingHTTPServer(("127.0.0.1", 0), Pages)  # the socket stays in the namespace

    server = bind() if netns is None else call_in_netns(netns, bind, CALL_TIMEOUT)
    thread = threading.Thread(target=server.serve_forever, name="other-site", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
