"""The proxy environment: which spelling wins, NO_PROXY matching, which proxy carries HTTPS."""

from __future__ import annotations

from zerogate.deploy.proxyenv import (
    bypasses_proxy,
    proxy_address,
    proxy_for_https,
    read_proxy_env,
    redact_proxy,
)


def test_proxy_environment() -> None:
    env = read_proxy_env(
        {"HTTPS_PROXY": "http://user:secret@proxy.corp:3128", "NO_PROXY": ".internal,10.0.0.0/8"}
    )
    assert proxy_for_https("ctl.example.test", env) == "http://user:secret@proxy.corp:3128"
    assert proxy_for_https("ctl.internal", env) is None  # domain suffix
    assert proxy_for_https("10.1.2.3", env) is None  # CIDR
    # Lower-case spelling wins (as in Python and httpx), and disagreement is flagged.
    both = read_proxy_env({"https_proxy": "http://a:1", "HTTPS_PROXY": "http://b:2"})
    assert both.get("HTTPS_PROXY") == "http://a:1" and both.conflicts == ("HTTPS_PROXY",)
    assert bypasses_proxy("anything", "*") and not bypasses_proxy("evilinternal", ".internal")
    only_http = read_proxy_env({"http_proxy": "http://p:3128"})
    assert proxy_for_https("ctl", only_http) is None


def test_proxy_urls_are_redacted_and_located() -> None:
    assert redact_proxy("http://user:secret@proxy.corp:3128") == "http://***@proxy.corp:3128"
    assert redact_proxy("user:secret@proxy.corp:3128") == "***@proxy.corp:3128"
    assert redact_proxy("http://proxy.corp:3128") == "http://proxy.corp:3128"
    assert proxy_address("http://proxy.corp:3128") == ("proxy.corp", 3128)
    assert proxy_address("https://proxy.corp") == ("proxy.corp", 443)
    assert proxy_address("socks5://proxy.corp") == ("proxy.corp", 1080)
    assert proxy_address("proxy.corp") == ("proxy.corp", 80)
    assert proxy_address("http://proxy.corp:notaport") is None
