"""A plain HTTPS client for the portal (no browser): keeps the cookie, reads the CSRF token."""

from __future__ import annotations

import re
from typing import Any

import httpx

from zerogate.netops.controller_api import make_ssl_context
from zerogate.testbed.localrun import Authenticator, LocalController

CSRF = re.compile(r'name="csrf" value="([A-Za-z0-9_-]+)"')
COOKIE = "__Secure-zgportal"


class PortalClient:
    def __init__(self, controller: LocalController) -> None:
        self.http = httpx.Client(
            base_url=controller.url,
            verify=make_ssl_context(controller.ca_pem),
            trust_env=False,
            timeout=30,
            follow_redirects=False,
        )
        self.username = ""

    def close(self) -> None:
        self.http.close()

    def sign_in(self, username: str, password: str, code: str) -> httpx.Response:
        form = {"username": username, "password": password, "totp": code}
        return self.http.post("/portal/sign-in", data=form, headers={"Sec-Fetch-Site": "same-origin"})

    def sign_in_as(self, username: str, password: str, auth: Authenticator) -> None:
        r = self.sign_in(username, password, auth.code())
        assert r.status_code == 303 and r.headers["location"] == "/portal/", r.text

    @property
    def token(self) -> str:
        return str(self.http.cookies.get(COOKIE, path="/portal"))

    def csrf(self, page: str = "/portal/") -> str:
        r = self.http.get(page)
        assert r.status_code == 200, r.text
        found = CSRF.search(r.text)
        assert found, "no CSRF token in the page"
        return found.group(1)

    def post(
        self, path: str, form: dict[str, Any], *, csrf: str | None = None, **headers: str
    ) -> httpx.Response:
        data = dict(form) | ({"csrf": csrf} if csrf is not None else {})
        return self.http.post(path, data=data, headers={"Sec-Fetch-Site": "same-origin"} | headers)
