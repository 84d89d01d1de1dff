"""The cross-site decision the portal and the JIT page share."""

from __future__ import annotations

import pytest

from zerogate.model.web import is_cross_site


@pytest.mark.parametrize(
    ("headers", "cross"),
    [
        ({"Sec-Fetch-Site": "same-origin", "Origin": "null"}, False),  # no-referrer: Origin null
        ({"Sec-Fetch-Site": "none"}, False),  # typed or bookmarked
        ({"Sec-Fetch-Site": "cross-site", "Origin": "https://h.test"}, True),  # metadata wins
        ({"Sec-Fetch-Site": "same-site"}, True),  # a sibling subdomain is another site here
        ({"Origin": "https://h.test", "Host": "h.test"}, False),  # no fetch metadata: Origin
        ({"Origin": "https://evil.test", "Host": "h.test"}, True),
        ({"Origin": "http://h.test", "Host": "h.test"}, True),  # not over TLS
        ({"Host": "h.test"}, False),  # a non-browser client sends neither
    ],
)
def test_is_cross_site(headers: dict[str, str], cross: bool) -> None:
    lower = {k.lower(): v for k, v in headers.items()}
    assert is_cross_site(lambda name: lower.get(name.lower())) is cross
