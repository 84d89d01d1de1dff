"""The admin portal: server-rendered pages on the controller's own TLS listener.

Every page module has a router of :class:`~zerogate.controller.portal.web.PortalRoute`
routes (security headers on every answer, a redirect to the sign-in page without a
session); they are gathered here into the one ``router`` that ``create_app`` registers.
"""

from __future__ import annotations

from fastapi import APIRouter

from zerogate.controller.portal import access, overview, people, records, signin, sites

router = APIRouter(include_in_schema=False)
for _page in (signin, overview, sites, people, access, records):
    router.include_router(_page.router)
