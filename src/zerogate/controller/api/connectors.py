"""``/v1/connectors``: list, show, update and delete (connectors are created by enrollment).

A connector's name may hold ``/`` (``{name:path}``). Its answer carries its
tunnel state from its latest report. An update describes it (location,
bandwidth class, owner: no new config revision) or drains it (``draining``: a
new revision, the gateways send it no new flows); a delete revokes its device.
"""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy.ext.asyncio import AsyncSession

from zerogate.controller import schemas as s
from zerogate.controller.api.crud import Change, Resource, crud_routes
from zerogate.controller.services import connectors
from zerogate.controller.services.lookup import by_name
from zerogate.store.db import utcnow
from zerogate.store.models import Connector

router = APIRouter(prefix="/v1", tags=["devices"])


def _connector_out(c: Connector, group: str, raw_report: str | None) -> s.ConnectorOut:
    return s.ConnectorOut(
        id=c.id,
        name=c.name,
        description=c.description,
        location=c.location,
        bandwidth_class=c.bandwidth_class,
        owner=c.owner,
        connector_group=group,
        device_id=c.device_id,
        draining=c.draining,
        status=c.device.status,
        last_seen_at=c.device.last_seen_at,
        created_at=c.created_at,
        **connectors.connector_tunnel(raw_report, utcnow()),
    )


async def find(session: AsyncSession, name: str) -> Connector:
    return await by_name(session, Connector, name, "connector")


async def list_all(session: AsyncSession) -> list[s.ConnectorOut]:
    groups = await connectors.group_names(session)
    rows = await connectors.list_connectors(session)
    reports = await connectors.connector_reports(session)
    return [_connector_out(c, groups.get(c.connector_group_id, ""), reports.get(c.device_id)) for c in rows]


async def show(session: AsyncSession, c: Connector) -> s.ConnectorOut:
    report = (await connectors.connector_reports(session, c.device_id)).get(c.device_id)
    return _connector_out(c, (await connectors.group_names(session)).get(c.connector_group_id, ""), report)


async def update(change: Change, c: Connector, body: s.ConnectorUpdate) -> s.ConnectorOut:
    if connectors.update(c, body):
        change.mutation.config_change = True  # the gateways must hear of the drain
    return await show(change.session, c)


async def delete(change: Change, c: Connector) -> None:
    await connectors.delete(change.session, c)


crud_routes(
    router,
    Resource(
        kind="connector",
        path="/connectors",
        tag="connectors",
        noun="connector",
        nouns="connectors",
        key="name",
        key_spans_slashes=True,
        out=s.ConnectorOut,
        update_body=s.ConnectorUpdate,
        find=find,
        list_all=list_all,
        show=show,
        update=update,
        delete=delete,
        update_changes_config=False,
        descriptions={"delete_connector": "Revoke the connector's device and remove the connector."},
    ),
)
