"""Pure decisions shared by zerogate's browser-facing pages (the admin portal on the
controller, the just-in-time page on the segment server)."""

from __future__ import annotations

from collections.abc import Callable


def is_cross_site(header: Callable[[str], str | None]) -> bool:
    """Whether a form post came from another site, from its request headers (``header``
    looks one up by name, case-insensitively).

    ``Sec-Fetch-Site`` decides when it is there: no page can set it. ``Origin`` is compared
    only when a client sends no fetch metadata, because under the pages'
    ``Referrer-Policy: no-referrer`` a browser sends ``Origin: null`` even for the page's
    own form."""
    site = header("Sec-Fetch-Site")
    if site is not None:
        return site not in ("same-origin", "none")
    origin = header("Origin")
    return origin is not None and origin != f"https://{header('Host') or ''}"
