"""The REST API: one thin router per resource.

Each admin object's module holds its resource's :class:`~.crud.Resource`
(registered by :func:`~.crud.crud_routes`: list, show, create, update, delete)
and only its own extra routes (connectors: the same without create). The
rest of the device side (meta, provisioning keys, enrollment, devices,
config, client sessions) is plain routes; segment servers are a resource,
and the segment side (assets, modes, review, the server's report) plain routes. The rules live in
:mod:`zerogate.controller.services`. No router imports another; the shared HTTP pieces (the ``Admin`` and ``State``
dependencies) come from :mod:`zerogate.controller.auth`. ``app.py`` includes
the routers (the OpenAPI document lists paths in that order).
"""
